"""Face detection (MTCNN), five-point landmarks and similarity alignment to a landmark template.

Shared by the identity metrics (:mod:`hfgi3d.metrics.arcface`: detect → align to the ArcFace
112×112 template → embed) and photo preprocessing (photo → aligned crop). Detection runs
facenet-pytorch's MTCNN, whose P/R/O-net weights ship inside the package (no download).
The caller builds the detector once (:func:`make_detector`) and passes it to every call;
nothing here is cached behind the caller's back.

Convention:
    Images are ``B×3×H×W`` float tensors in ``[-1, 1]``, RGB (EG3D's ``image`` range);
    detection also accepts an ``H×W×3`` ``uint8`` RGB numpy array or a PIL image. Points are
    pixel coordinates ``(x, y) = (col, row)`` with the *centre* of pixel ``(col, row)`` at
    ``(col, row)`` (so the image spans ``[-0.5, W - 0.5] × [-0.5, H - 0.5]``): the convention of
    OpenCV's ``warpAffine``, of insightface's ``norm_crop`` and of MTCNN's landmarks (the
    original MTCNN's 1-based Matlab centres, shifted to 0-based by facenet-pytorch's ``- 1``).
    The five landmarks are, in this order, :data:`LANDMARK_NAMES`: left eye, right eye, nose
    tip, left mouth corner, right mouth corner, where *left* means the **viewer's left** (the
    smaller ``x`` in a frontal photo, i.e. the subject's right eye) — MTCNN's order and the
    order of insightface's ArcFace template. An affine matrix ``M`` (``2×3``) maps a source
    image point to an output point, ``[x', y'] = M @ [x, y, 1]``, as OpenCV's ``warpAffine`` and
    kornia's ``warp_affine`` (which resamples here) take it; the similarity fit is
    scikit-image's ``SimilarityTransform`` (Umeyama), as in insightface's ``norm_crop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np
import torch
from PIL import Image
from skimage.transform import SimilarityTransform
from torch import Tensor

if TYPE_CHECKING:  # facenet-pytorch and kornia are imported where used: the CLI's parsers import this module
    from facenet_pytorch import MTCNN

ImageLike: TypeAlias = Tensor | np.ndarray | Image.Image
"""What :func:`detect_faces` accepts: a ``3×H×W`` / ``1×3×H×W`` tensor in ``[-1, 1]``, an
``H×W×3`` ``uint8`` array or a PIL image (all RGB)."""

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Order of the five landmarks; "left" is the viewer's left (smaller ``x`` in a frontal photo)."""
NUM_LANDMARKS = len(LANDMARK_NAMES)
LEFT_EYE, RIGHT_EYE, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(NUM_LANDMARKS)

ARCFACE_SIZE = 112
"""Side of the aligned face crop that insightface's ArcFace models take (pixels)."""
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),  # left eye (viewer's left)
    (73.5318, 51.5014),  # right eye
    (56.0252, 71.7366),  # nose tip
    (41.5493, 92.3655),  # left mouth corner
    (70.7299, 92.2041),  # right mouth corner
)
"""insightface's 5-point ArcFace template (``arcface_dst`` / ``arcface_src`` in
``python-package/insightface/utils/face_align.py``), ``(x, y)`` pixels of the 112×112 crop, in
the order of :data:`LANDMARK_NAMES` and the pixel-centre convention of the module docstring."""

# facenet-pytorch's defaults: smallest face searched (px), P/R/O-net score thresholds.
DEFAULT_MIN_FACE_SIZE_PX = 20
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)

_MAX_PIXEL = 255.0  # MTCNN reads 8-bit-range values and normalises them itself, (x − 127.5) / 128
_MIN_POINT_SPREAD_PX2 = 1e-12  # squared spread (px²) below which source points all coincide


class NoFaceError(ValueError):
    """No face was detected in an image; :attr:`image_name` names it. Callers decide whether to skip."""

    def __init__(self, image_name: str) -> None:
        super().__init__(
            f"no face detected in {image_name}: MTCNN found nothing above its thresholds; pass an image "
            f"with a clearly visible face at least the detector's min_face_size wide "
            f"({DEFAULT_MIN_FACE_SIZE_PX} px by default), or skip this image"
        )
        self.image_name = image_name


class Detections(NamedTuple):
    """Faces found in one image (``N`` of them, possibly 0), most confident first. CPU float32."""

    boxes: Tensor
    """``N×4`` boxes ``(x0, y0, x1, y1)``, pixels (may extend past the image border)."""
    scores: Tensor
    """``N`` MTCNN O-net face probabilities in ``[0, 1]``, descending."""
    landmarks: Tensor
    """``N×5×2`` points ``(x, y)``, pixels, in the order of :data:`LANDMARK_NAMES`."""


def make_detector(
    device: torch.device | str | None = None,
    *,
    min_face_size: int = DEFAULT_MIN_FACE_SIZE_PX,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> MTCNN:
    """Build facenet-pytorch's MTCNN (weights from the package, no download) for :func:`detect_faces`.

    Build it once and keep it: construction reads three weight files.
    """
    from facenet_pytorch import MTCNN

    detector = MTCNN(
        min_face_size=min_face_size,
        thresholds=list(thresholds),
        keep_all=True,
        select_largest=False,  # we sort by score ourselves; "largest" would reorder by box area
        device=torch.device(device) if device is not None else None,
    )
    return detector.eval()


def _to_rgb255(image: ImageLike) -> Tensor:
    """``H×W×3`` float32 in ``[0, 255]``: what MTCNN's ``detect`` reads."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an H×W×3 uint8 RGB array, got shape {image.shape} and dtype {image.dtype}: "
                "convert it (e.g. PIL's .convert('RGB')) or pass a 3×H×W tensor in [-1, 1]"
            )
        return torch.from_numpy(image.copy()).float()
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"expected one 3×H×W float image tensor in [-1, 1], got shape {tuple(image.shape)}")
    # Rounded to 8 bits so a tensor and the uint8 photo it came from give identical detections.
    return ((image.detach().float().clamp(-1, 1) + 1) * (_MAX_PIXEL / 2)).round().permute(1, 2, 0)  # H×W×3


def detect_faces(detector: MTCNN, image: ImageLike) -> Detections:
    """All faces MTCNN finds in one image, sorted by score (most confident first).

    Args:
        detector: from :func:`make_detector`.
        image: a ``3×H×W`` (or ``1×3×H×W``) tensor in ``[-1, 1]``, an ``H×W×3`` ``uint8`` array
            or a PIL image, RGB.

    Returns:
        :class:`Detections` with ``N ≥ 0`` faces (``N = 0``: none found, no error).

    Convention:
        Pixel centres at integer ``(col, row)`` (module docstring); landmarks in the order of
        :data:`LANDMARK_NAMES`, left = viewer's left. Deterministic on the CPU.
    """
    pixels = _to_rgb255(image).to(detector.device)  # H×W×3
    with torch.no_grad():
        boxes, scores, landmarks = detector.detect(pixels, landmarks=True)
    if boxes is None:  # facenet-pytorch's "no face" result
        return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, NUM_LANDMARKS, 2))
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32))  # N×4
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32))  # N
    landmarks_t = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))  # N×5×2
    order = torch.argsort(scores_t, descending=True, stable=True)
    return Detections(boxes_t[order], scores_t[order], landmarks_t[order])


def detect_best_faces(detector: MTCNN, images: Tensor, *, name: str = "image") -> Detections:
    """The most confident face of every image of a batch.

    Args:
        detector: from :func:`make_detector`.
        images: ``B×3×H×W`` in ``[-1, 1]``, RGB.
        name: names the batch in errors; image ``i`` is called ``{name}[i]``.

    Returns:
        :class:`Detections` with exactly one face per image (``N = B``), on the CPU.

    Raises:
        NoFaceError: some image holds no face (the first such image is named).
    """
    if images.ndim != 4:
        raise ValueError(f"expected a B×3×H×W batch for {name}, got shape {tuple(images.shape)}")
    found = []
    for index, image in enumerate(images):
        detections = detect_faces(detector, image)
        if len(detections.scores) == 0:
            raise NoFaceError(f"{name}[{index}]")
        found.append(detections)
    return Detections(
        boxes=torch.cat([d.boxes[:1] for d in found]),  # B×4
        scores=torch.cat([d.scores[:1] for d in found]),  # B
        landmarks=torch.cat([d.landmarks[:1] for d in found]),  # B×5×2
    )


# ----------------------------------------------------------------------------------------------
# Similarity transforms and warping


def similarity_transform(src_pts: Tensor, dst_pts: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; never a reflection) ``src → dst``.

    Minimises ``Σ_k ‖dst_k − (s·R·src_k + t)‖²`` over ``s ≥ 0``, ``R ∈ SO(2)``, ``t``: Umeyama's
    estimate, as scikit-image's :class:`~skimage.transform.SimilarityTransform` computes it (the fit
    insightface's ``norm_crop`` uses). It runs in float64 on the CPU, one point set at a time, and
    carries no gradient: the landmarks it is fed come from a detector.

    Args:
        src_pts: ``N×2`` or ``B×N×2`` source points ``(x, y)``, ``N ≥ 2``.
        dst_pts: the matching target points, same shape.

    Returns:
        ``2×3`` (or ``B×2×3``) matrices ``M`` with ``dst ≈ M @ [x, y, 1]``, in ``src_pts``'s dtype
        and on its device.

    Raises:
        ValueError: mismatched shapes, or source points that all coincide (no scale or rotation).
    """
    if src_pts.shape != dst_pts.shape or src_pts.ndim not in (2, 3) or src_pts.shape[-1] != 2 or src_pts.shape[-2] < 2:
        raise ValueError(
            f"expected src and dst point sets of equal shape N×2 or B×N×2 with N ≥ 2, "
            f"got {tuple(src_pts.shape)} and {tuple(dst_pts.shape)}"
        )
    src = src_pts.detach().reshape(-1, *src_pts.shape[-2:]).cpu().double().numpy()  # B×N×2
    dst = dst_pts.detach().reshape(src.shape).cpu().double().numpy()
    spread = np.square(src - src.mean(axis=1, keepdims=True)).sum(axis=(1, 2))  # B, Σ |src_k − mean|²
    if bool((spread <= _MIN_POINT_SPREAD_PX2).any()):
        raise ValueError("the source points of a similarity transform all coincide: no scale or rotation fits")
    matrices = np.stack([_estimate_similarity(src_b, dst_b) for src_b, dst_b in zip(src, dst, strict=True)])
    matrix = torch.from_numpy(matrices).to(dtype=src_pts.dtype, device=src_pts.device)  # B×2×3
    return matrix if src_pts.ndim == 3 else matrix[0]


def _estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``2×3`` Umeyama fit of one ``N×2`` float64 point set onto another (scikit-image ≥ 0.26)."""
    fitted = SimilarityTransform.from_estimate(src, dst)
    if not fitted:  # a FailedEstimation, which says why
        raise ValueError(f"no similarity fits the points {src.tolist()} → {dst.tolist()}: {fitted}")
    return np.asarray(fitted.params[:2], dtype=np.float64)


def _output_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {size}")
    return height, width


def warp_affine(
    image: Tensor,
    matrix: Tensor,
    size: int | tuple[int, int],
    *,
    fill: float = -1.0,
    mode: str = "bilinear",
) -> Tensor:
    """Resample an image so that source point ``p`` lands on output point ``M @ [p, 1]`` (OpenCV's ``warpAffine``).

    Args:
        image: ``B×C×H×W``.
        matrix: ``2×3`` or ``B×2×3`` source→output affine maps (``1×2×3`` broadcasts).
        size: output side ``S`` (square) or ``(height, width)``.
        fill: value of output pixels that map outside the source (default ``-1``: black in
            ``[-1, 1]``, as insightface's ``borderValue = 0`` on 8-bit images). Bilinear samples
            near the border blend towards it.
        mode: ``grid_sample`` interpolation, ``"bilinear"`` (OpenCV's default) or ``"nearest"``.

    Returns:
        ``B×C×S×S`` (or ``B×C×height×width``) in ``image``'s dtype.

    Convention:
        Pixel ``(col, row)`` — of the source and of the output — has its centre at point
        ``(col, row)``, the convention of the landmarks (module docstring) and of
        :func:`kornia.geometry.transform.warp_affine`, which does the work: it takes the same
        source→output pixel matrix and, with ``align_corners=False``, places a source point
        ``(x, y)`` at ``grid_sample`` coordinate ``((2x + 1) / W − 1, (2y + 1) / H − 1)``. That
        needs kornia ≥ 0.9: earlier releases normalise with the ``align_corners=True`` formula
        whatever the flag (kornia#3904), a sub-pixel scale and shift. Each output pixel centre
        ``q`` reads the source at ``M⁻¹ q``. There is no anti-aliasing (like ``warpAffine``):
        strong down-scaling aliases.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a B×C×H×W image, got shape {tuple(image.shape)}")
    batch, channels = image.shape[:2]
    out_height, out_width = _output_size(size)
    matrices = matrix.to(image) if matrix.ndim == 3 else matrix.to(image)[None]  # B×2×3
    if matrices.shape[1:] != (2, 3) or matrices.shape[0] not in (1, batch):
        raise ValueError(f"expected 2×3 or B×2×3 affine matrices for a batch of {batch}, got {tuple(matrix.shape)}")
    if bool((torch.linalg.det(matrices[:, :, :2]) == 0).any()):
        raise ValueError(f"singular affine matrix {matrix.tolist()}: it flattens the image onto a line or a point")
    from kornia.geometry.transform import warp_affine as kornia_warp_affine

    return kornia_warp_affine(
        image,
        matrices,  # a 1×2×3 matrix broadcasts over the batch
        (out_height, out_width),
        mode=mode,
        padding_mode="fill",
        align_corners=False,
        fill_value=torch.full((channels,), fill, dtype=image.dtype, device=image.device),
    )


def align_to_template(
    image: Tensor,
    landmarks: Tensor,
    template: Tensor | Sequence[Sequence[float]],
    size: int | tuple[int, int],
    *,
    fill: float = -1.0,
) -> Tensor:
    """Warp each image by the similarity that best maps its landmarks onto a template.

    Args:
        image: ``B×C×H×W``.
        landmarks: ``B×K×2`` points ``(x, y)`` in ``image``'s pixels (e.g. ``B×5×2`` from
            :func:`detect_best_faces`).
        template: ``K×2`` target points in the output's pixels (e.g. :data:`ARCFACE_TEMPLATE_112`,
            or a scaled and shifted copy for a larger crop with margin).
        size: output side, or ``(height, width)``.
        fill: value outside the source image (default black).

    Returns:
        ``B×C×size×size`` (see :func:`warp_affine` for the pixel-centre convention).
    """
    target = torch.as_tensor(template, dtype=image.dtype, device=image.device)  # K×2
    points = landmarks.to(image)
    if points.ndim != 3 or points.shape[0] != image.shape[0] or points.shape[1:] != target.shape:
        raise ValueError(
            f"expected landmarks of shape B×{len(target)}×2 for {image.shape[0]} images, got {tuple(landmarks.shape)}"
        )
    matrix = similarity_transform(points, target.expand_as(points))  # B×2×3
    return warp_affine(image, matrix, size, fill=fill)


def align_arcface(image: Tensor, landmarks: Tensor) -> Tensor:
    """Align faces as insightface's ``norm_crop`` does: five landmarks → the ArcFace 112×112 template.

    Args:
        image: ``B×3×H×W`` in ``[-1, 1]``, RGB.
        landmarks: ``B×5×2`` in ``image``'s pixels, order of :data:`LANDMARK_NAMES`.

    Returns:
        ``B×3×112×112`` in ``[-1, 1]``; areas outside the photo are black (``-1``).
    """
    return align_to_template(image, landmarks, ARCFACE_TEMPLATE_112, ARCFACE_SIZE)
