"""Face detection, five-point landmarks, similarity transforms, warping and ArcFace alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.transform import SimilarityTransform

from hfgi3d.faces import (
    ARCFACE_SIZE,
    ARCFACE_TEMPLATE_112,
    LEFT_EYE,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE,
    RIGHT_EYE,
    Detections,
    NoFaceError,
    align_arcface,
    align_to_template,
    detect_best_faces,
    detect_faces,
    make_detector,
    similarity_transform,
    warp_affine,
)

# MIN_SCORE to EYE_ON_TEMPLATE_PX: measured on the development machine (x86-64 CPU) from MTCNN on the astronaut,
# not reference values.
MIN_SCORE = 0.99  # MTCNN's probability for the astronaut's clear frontal face
LANDMARK_NOISE_PX = 3.0  # MTCNN landmark repeatability across flips and re-alignment
REDETECT_TOLERANCE_PX = 1.5  # a landmark re-detected in the aligned crop vs. where the warp put it
EYE_ON_TEMPLATE_PX = 4.0  # eye vs. template point: least-squares fit residual (~2.6 px) + detection noise
CANVAS_MARGIN_PX = 56  # mid-grey border around the tight 112×112 crop so MTCNN sees a whole face
MID_GREY = 0.0  # in [-1, 1]
EXACT_ATOL = 1e-4


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    return make_detector()


@pytest.fixture(scope="module")
def astronaut_uint8() -> np.ndarray:
    return skimage.data.astronaut()  # 512×512×3 RGB


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 → ``1×3×H×W`` in [-1, 1]."""
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``2×3`` matrix applied to ``N×2`` points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.fixture(scope="module")
def astronaut_faces(detector: torch.nn.Module, astronaut_uint8: np.ndarray) -> Detections:
    return detect_faces(detector, astronaut_uint8)


# ----------------------------------------------------------------------------------------------
# Detection


def test_astronaut_has_one_face_with_plausible_landmarks(astronaut_faces: Detections) -> None:
    boxes, scores, landmarks = astronaut_faces
    assert boxes.shape == (1, 4) and scores.shape == (1,) and landmarks.shape == (1, 5, 2)
    assert scores[0] > MIN_SCORE
    x0, y0, x1, y1 = boxes[0].tolist()
    points = landmarks[0]
    # all five points inside the face box
    assert bool(((points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)).all())
    # left = viewer's left: smaller x; eyes above the nose, nose above the mouth
    assert points[LEFT_EYE, 0] < points[NOSE, 0] < points[RIGHT_EYE, 0]
    assert points[MOUTH_LEFT, 0] < points[MOUTH_RIGHT, 0]
    assert max(points[LEFT_EYE, 1], points[RIGHT_EYE, 1]) < points[NOSE, 1]
    assert points[NOSE, 1] < min(points[MOUTH_LEFT, 1], points[MOUTH_RIGHT, 1])
    # the eyes are roughly a third to a half of the box width apart
    eye_distance = float((points[RIGHT_EYE] - points[LEFT_EYE]).norm())
    assert 0.3 * (x1 - x0) < eye_distance < 0.6 * (x1 - x0)


def test_tensor_numpy_and_pil_inputs_agree(
    detector: torch.nn.Module, astronaut_uint8: np.ndarray, astronaut_faces: Detections
) -> None:
    for image in (_to_tensor(astronaut_uint8), _to_tensor(astronaut_uint8)[0], Image.fromarray(astronaut_uint8)):
        found = detect_faces(detector, image)
        for ours, reference in zip(found, astronaut_faces, strict=True):
            torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_detection_is_deterministic(detector: torch.nn.Module, astronaut_uint8: np.ndarray) -> None:
    first, second = detect_faces(detector, astronaut_uint8), detect_faces(detector, astronaut_uint8)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_mirrored_astronaut_swaps_eyes_and_mouth_corners(
    detector: torch.nn.Module, astronaut_uint8: np.ndarray, astronaut_faces: Detections
) -> None:
    width = astronaut_uint8.shape[1]
    mirrored = detect_faces(detector, np.ascontiguousarray(astronaut_uint8[:, ::-1]))
    assert len(mirrored.scores) == 1
    # Mirroring maps pixel centre x to W − 1 − x and turns the viewer's left eye into the right one.
    original = astronaut_faces.landmarks[0]
    expected = original[[RIGHT_EYE, LEFT_EYE, NOSE, MOUTH_RIGHT, MOUTH_LEFT]].clone()
    expected[:, 0] = width - 1 - expected[:, 0]
    assert float((mirrored.landmarks[0] - expected).norm(dim=1).max()) < LANDMARK_NOISE_PX


@pytest.mark.parametrize("name", ["coffee", "grey"])
def test_no_face_gives_empty_detections_and_named_error(detector: torch.nn.Module, name: str) -> None:
    pixels = skimage.data.coffee() if name == "coffee" else np.full((256, 256, 3), 128, dtype=np.uint8)
    found = detect_faces(detector, pixels)
    assert found.boxes.shape == (0, 4) and found.scores.shape == (0,) and found.landmarks.shape == (0, 5, 2)
    with pytest.raises(NoFaceError, match=r"photos\[0\]") as error:
        detect_best_faces(detector, _to_tensor(pixels), name="photos")
    assert error.value.image_name == "photos[0]"


def test_best_faces_of_a_batch_names_the_faceless_image(detector: torch.nn.Module, astronaut_uint8: np.ndarray) -> None:
    face = _to_tensor(astronaut_uint8)
    batch = torch.cat([face, torch.zeros_like(face)])
    with pytest.raises(NoFaceError, match=r"renders\[1\]"):
        detect_best_faces(detector, batch, name="renders")
    best = detect_best_faces(detector, torch.cat([face, face]))
    assert best.landmarks.shape == (2, 5, 2) and torch.equal(best.landmarks[0], best.landmarks[1])


def test_bad_inputs_are_rejected(detector: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detect_faces(detector, np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="3×H×W"):
        detect_faces(detector, torch.zeros(2, 3, 8, 8))


# ----------------------------------------------------------------------------------------------
# Similarity transform


def _random_similarity(generator: torch.Generator, batch: int) -> torch.Tensor:
    """``batch×2×3`` similarities with scale in [0.5, 2], any rotation, translation in [-50, 50]."""
    scale = 0.5 + 1.5 * torch.rand(batch, generator=generator, dtype=torch.float64)
    angle = (2 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1) * math.pi
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    translation = (2 * torch.rand(batch, 2, generator=generator, dtype=torch.float64) - 1) * 50
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return torch.cat([linear, translation[..., None]], dim=-1)


@pytest.mark.parametrize("batch", [None, 1, 2])
def test_similarity_transform_recovers_a_known_similarity(batch: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = _random_similarity(generator, batch or 1)  # B×2×3
    src = torch.rand(batch or 1, 5, 2, generator=generator, dtype=torch.float64) * 200  # B×5×2
    dst = src @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
    if batch is None:
        estimated = similarity_transform(src[0].float(), dst[0].float())
        assert estimated.shape == (2, 3)
        torch.testing.assert_close(estimated, matrix[0].float(), rtol=0, atol=EXACT_ATOL)
    else:
        estimated = similarity_transform(src.float(), dst.float())
        assert estimated.shape == (batch, 2, 3)
        torch.testing.assert_close(estimated, matrix.float(), rtol=0, atol=EXACT_ATOL)


def test_similarity_transform_matches_umeyama_on_noisy_points() -> None:
    """Against scikit-image's Umeyama estimate (what insightface's ``norm_crop`` calls)."""
    generator = torch.Generator().manual_seed(1)
    src = torch.rand(3, 5, 2, generator=generator, dtype=torch.float64) * 300
    dst = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64).expand(3, 5, 2)
    ours = similarity_transform(src, dst)
    for index in range(3):
        reference = SimilarityTransform.from_estimate(src[index].numpy(), dst[index].numpy())
        torch.testing.assert_close(ours[index], torch.from_numpy(reference.params[:2]), rtol=0, atol=1e-9)


def _closed_form_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The previous hand-written fit, kept as the reference: centred points read as complex numbers, the
    least-squares ``s·R`` is ``c = Σ conj(src_k)·dst_k / Σ |src_k|²`` (``N×2`` → ``2×3``)."""
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    spread = src_c.square().sum()
    a = (src_c * dst_c).sum() / spread
    b = (src_c[:, 0] * dst_c[:, 1] - src_c[:, 1] * dst_c[:, 0]).sum() / spread
    linear = torch.stack([torch.stack([a, -b]), torch.stack([b, a])])
    return torch.cat([linear, (dst.mean(0) - linear @ src.mean(0))[:, None]], dim=1)


@pytest.mark.parametrize("num_points", [2, 3, 5])
def test_similarity_transform_keeps_the_closed_form_numbers(num_points: int) -> None:
    """scikit-image's Umeyama fit gives the previous closed form's matrices (measured: max |Δ| 3.4e-13 in float64)."""
    generator = torch.Generator().manual_seed(3)
    src = torch.rand(4, num_points, 2, generator=generator, dtype=torch.float64) * 500
    dst = torch.rand(4, num_points, 2, generator=generator, dtype=torch.float64) * 112
    dst[0] = src[0] * torch.tensor([-1.0, 1.0], dtype=torch.float64)  # a reflection: the fit still rotates
    ours = similarity_transform(src, dst)
    for index in range(len(src)):
        torch.testing.assert_close(ours[index], _closed_form_similarity(src[index], dst[index]), rtol=0, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    generator = torch.Generator().manual_seed(2)
    src = torch.rand(4, 5, 2, generator=generator) * 100
    mirrored = src * torch.tensor([-1.0, 1.0])  # dst is a reflection of src: the best fit must still rotate
    matrix = similarity_transform(src, mirrored)
    assert bool((torch.linalg.det(matrix[:, :, :2]) >= 0).all())
    linear = matrix[:, :, :2]
    torch.testing.assert_close(linear[:, 0, 0], linear[:, 1, 1])  # [[a, −b], [b, a]]: rotation × scale
    torch.testing.assert_close(linear[:, 0, 1], -linear[:, 1, 0])


def test_similarity_transform_rejects_coincident_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(torch.ones(5, 2), torch.rand(5, 2))
    with pytest.raises(ValueError, match="N×2"):
        similarity_transform(torch.rand(5, 2), torch.rand(4, 2))


# ----------------------------------------------------------------------------------------------
# Warping


def test_identity_warp_reproduces_the_image() -> None:
    image = torch.rand(2, 3, 20, 20) * 2 - 1
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(warp_affine(image, identity, 20), image, rtol=0, atol=1e-5)
    torch.testing.assert_close(warp_affine(image, identity.expand(2, 2, 3), 20), image, rtol=0, atol=1e-5)


def test_integer_translation_moves_pixels_and_fills_outside() -> None:
    image = torch.rand(1, 3, 10, 12) * 2 - 1
    shift = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 2.0]])  # source (x, y) → (x + 3, y + 2)
    warped = warp_affine(image, shift, (10, 12))
    torch.testing.assert_close(warped[..., 2:, 3:], image[..., :-2, :-3], rtol=0, atol=1e-5)
    assert bool((warped[..., :2, :] == -1).all()) and bool((warped[..., :, :3] == -1).all())
    grey = warp_affine(image, shift, (10, 12), fill=MID_GREY)
    assert bool((grey[..., :2, :] == MID_GREY).all())


# Measured on the development machine (x86-64 CPU), not reference values: the previous hand-written grid_sample
# warp (align_corners=False, fill by shifting the image) on the 3×5 ramp below; kornia's warp_affine reproduces it
# to 5e-6 (max |Δ| over 100 random warps).
MEASURED_AFFINE = ((1.1, -0.4, 0.8), (0.3, 0.9, -0.6))
MEASURED_WARP_4X6 = (
    (-0.6713, -0.5598, -0.6371, -0.7143, -0.7070, -0.7623),
    (0.1942, 0.1995, 0.1223, 0.0450, -0.0322, -0.1094),
    (-0.6955, -0.2429, 0.2722, 0.8044, 0.7272, 0.0529),
    (-1.0000, -1.0000, -1.0000, -0.9495, -0.4100, -0.6625),
)


@pytest.mark.parametrize("batch", [1, 2])
def test_warp_affine_keeps_the_measured_numbers(batch: int) -> None:
    image = (torch.arange(15.0).reshape(1, 1, 3, 5) / 7 - 1).expand(batch, 2, 3, 5)  # B×2×3×5 in [-1, 1]
    warped = warp_affine(image, torch.tensor(MEASURED_AFFINE), (4, 6))
    expected = torch.tensor(MEASURED_WARP_4X6).expand(batch, 2, 4, 6)
    torch.testing.assert_close(warped, expected, rtol=0, atol=1e-4)


def test_warp_affine_rejects_a_singular_matrix() -> None:
    with pytest.raises(ValueError, match="singular"):
        warp_affine(torch.zeros(1, 3, 5, 5), torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]), 5)


def test_scaling_is_about_pixel_centres() -> None:
    """Doubling about the origin: output pixel centre u reads source point u / 2 (centres at integers).

    With pixel *edges* at integers instead, it would read (u + 0.5) / 2 − 0.5 = u / 2 − 0.25.
    """
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)  # value = column index = x of the pixel centre
    double = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    warped = warp_affine(ramp, double, 16, fill=0.0)
    torch.testing.assert_close(warped[0, 0, 4], torch.arange(16.0) / 2, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# ArcFace alignment


def test_template_is_insightfaces() -> None:
    template = torch.tensor(ARCFACE_TEMPLATE_112)
    assert template.shape == (5, 2)
    torch.testing.assert_close(template[LEFT_EYE], torch.tensor([38.2946, 51.6963]))
    torch.testing.assert_close(template[MOUTH_RIGHT], torch.tensor([70.7299, 92.2041]))


def test_align_arcface_puts_the_landmarks_on_the_template(
    detector: torch.nn.Module, astronaut_uint8: np.ndarray, astronaut_faces: Detections
) -> None:
    image = _to_tensor(astronaut_uint8)
    landmarks = astronaut_faces.landmarks  # 1×5×2
    aligned = align_arcface(image, landmarks)
    assert aligned.shape == (1, 3, ARCFACE_SIZE, ARCFACE_SIZE)
    # The 112 crop is too tight for MTCNN: paste it into a mid-grey canvas and detect again.
    side = ARCFACE_SIZE + 2 * CANVAS_MARGIN_PX
    canvas = torch.full((1, 3, side, side), MID_GREY)
    canvas[
        ..., CANVAS_MARGIN_PX : CANVAS_MARGIN_PX + ARCFACE_SIZE, CANVAS_MARGIN_PX : CANVAS_MARGIN_PX + ARCFACE_SIZE
    ] = aligned
    redetected = detect_best_faces(detector, canvas).landmarks[0] - CANVAS_MARGIN_PX  # 5×2 in crop pixels
    template = torch.tensor(ARCFACE_TEMPLATE_112)
    # Every landmark lands where the similarity sends it (checks the warp's pixel-centre convention) ...
    where_sent = _apply(similarity_transform(landmarks[0], template), landmarks[0])
    assert float((redetected - where_sent).norm(dim=1).max()) < REDETECT_TOLERANCE_PX
    # ... and the eyes lie on their template points, up to the 5-point fit's residual.
    for eye in (LEFT_EYE, RIGHT_EYE):
        assert float((redetected[eye] - template[eye]).norm()) < EYE_ON_TEMPLATE_PX


def test_align_to_a_scaled_template_with_margin(detector: torch.nn.Module, astronaut_faces: Detections) -> None:
    image = _to_tensor(skimage.data.astronaut())
    scale, margin = 2, CANVAS_MARGIN_PX
    template = torch.tensor(ARCFACE_TEMPLATE_112) * scale + margin
    aligned = align_to_template(image, astronaut_faces.landmarks, template, ARCFACE_SIZE * scale + 2 * margin)
    redetected = (detect_best_faces(detector, aligned).landmarks[0] - margin) / scale  # in 112-crop pixels
    for eye in (LEFT_EYE, RIGHT_EYE):
        assert float((redetected[eye] - torch.tensor(ARCFACE_TEMPLATE_112[eye])).norm()) < EYE_ON_TEMPLATE_PX


def test_align_arcface_checks_landmark_shape() -> None:
    with pytest.raises(ValueError, match="landmarks"):
        align_arcface(torch.zeros(2, 3, 64, 64), torch.zeros(1, 5, 2))
