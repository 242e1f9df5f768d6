"""The EG3D crop of a face: where to cut it (from five landmarks), its camera, and the resampling.

Convention (the crop):
    EG3D's FFHQ crops come from two steps (``NVlabs/eg3d`` ``dataset_preprocessing/ffhq/``):
    ``align_multiprocess.py`` re-runs FFHQ's ``recreate_aligned_images`` (``NVlabs/ffhq-dataset``)
    with a 1.8× larger quad at 1500², which levels the face: the quad's x axis is
    ``eye_to_eye − rot90(eye_to_mouth)``. Then ``crop_images.py`` runs Deep3DFaceRecon's ``align_img``
    (5 landmarks, ``POS`` orthographic fit to the mean face ``lm3d_std``, no rotation) at
    ``target_size = 1024`` and ``rescale_factor`` px per decimetre of face, centre-crops 700² and
    resizes to 512². ``crop_images_in_the_wild.py`` does the same on MTCNN landmarks, without the
    levelling step, with ``rescale_factor = 300``; the FFHQ script reads it per image from
    ``cropping_params.json``, but the focal length all FFHQ labels share (``2985.29 / 700`` in
    ``preprocess_face_cameras.py``, i.e. 4.2647) is derived from 300 (``3dface2idr_mat.py``), so 300
    is taken here. FFHQ's own quad (side ``2·max(2·|eye_to_eye|, 1.8·|eye_to_mouth|)``,
    centred at ``eye_avg + 0.1·eye_to_mouth``) is *not* EG3D's crop: for the mean face EG3D's crop
    is 7 % tighter (the FFHQ quad would span 550 px of it) and centred ~50 px lower (between the
    eyes and the nose tip rather than just below the eyes).

    Implemented here, as one similarity ``photo px → crop px``:

    * rotation: the face's FFHQ quad x axis (above) is turned level — the roll removal EG3D's
      training crops have (and its in-the-wild script lacks). The axis averages the eye line and
      the normal of the eye–mouth line, so on a turned face, whose mouth shifts sideways against
      the eyes, the eye line stays level to ~1° (yaw 0.3 rad);
    * landmarks: MTCNN's five points truncated to whole photo pixels, as EG3D's ``batch_mtcnn.py``
      receives them from the ``mtcnn`` package (:func:`eg3d_landmarks`);
    * scale and shift: ``align_img`` itself (:func:`pos_fit`, :func:`eg3d_crop_matrix`): the
      levelled landmarks are fitted by an orthographic projection of the Basel mean face's five
      points (:data:`hfgi3d.pose.LANDMARKS_BFM_DM`; Deep3DFaceRecon's ``POS``: an affine 3D → 2D
      map by least squares, of which only the scale, the mean norm of its two rows, and the
      image of the model's origin are kept); the photo is scaled to :data:`RESCALE_FACTOR` px per
      decimetre, cut :data:`TARGET_SIZE`² around that origin, centre-cropped to
      :data:`CENTRE_CROP_SIZE`² and resized to ``size``². ``align_img`` measures ``y`` upwards
      from ``H − 1 − y`` and floors the crop box to whole pixels; both are kept as the half-pixel
      offsets they amount to (the floor on average; the half photo pixels grow with the
      enlargement). In a photo at the crop's own scale a frontal mean face's five points land at
      eyes ``(187.9, 191.7)``, ``(324.3, 191.7)``, nose ``(257.1, 265.5)``, mouth
      ``(201.1, 339.1)``, ``(311.0, 339.0)`` px at 512² (scale with ``size``); a photo that is
      already an EG3D crop comes back with its landmarks where they were (``benchmarks/pose_accuracy.py``
      measures the round trip on crops made by EG3D's scripts);
    * output ``size × size`` (default 512), pixel centres at integers as in :mod:`hfgi3d.faces`,
      resampled by kornia's ``warp_affine``: bicubic when enlarging; when shrinking, the photo is
      first resized with antialiasing to the crop's scale (FFHQ's "shrink" step), then read
      bilinearly;
    * outside the photo: the photo mirrored about its outer pixel edges (``-0.5`` and ``W − 0.5``),
      blended towards a blurred copy (σ = 2 % of the crop)
      and, farther out, towards the median colour of the crop's in-photo pixels — FFHQ's padding
      recipe (ramp 30 % of the crop, blur also 10 % inside the border), not bit-exact.

    The camera comes from the aligned crop (:mod:`hfgi3d.pose`, :mod:`hfgi3d.pose.mediapipe`): an
    orbit camera ``orbit_c25(yaw, pitch)``, which has no roll. Seen from an orbit camera that is
    turned *and* raised or lowered, an upright head's eye line is not level (1.9° at yaw 0.3,
    pitch 0.1 rad; 6.8° at yaw 0.5, pitch 0.25), so a levelled crop of such a face disagrees with
    its camera by that in-plane rotation. EG3D's own labels carry that roll; ours cannot.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine
from torch import Tensor

from hfgi3d.faces import LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, NUM_LANDMARKS, RIGHT_EYE
from hfgi3d.pose import LANDMARKS_BFM_DM, PnPPoseEstimator, PoseEstimate, PoseEstimator

DEFAULT_SIZE = 512
"""Side of the crops, pixels: EG3D's FFHQ models are 512²."""
TARGET_SIZE = 1024
"""``align_img``'s ``target_size`` in EG3D's cropping scripts: the square cut around the face, pixels."""
RESCALE_FACTOR = 300.0
"""``align_img``'s ``rescale_factor``: pixels per decimetre of the mean face in the ``TARGET_SIZE`` image."""
CENTRE_CROP_SIZE = 700
"""EG3D's ``center_crop_size``: the centre of the ``TARGET_SIZE`` image that is resized to the output."""
BORDER_BLUR_SIGMA = 0.02  # × size: FFHQ blurs the padding with σ = 0.02 · quad size
BORDER_RAMP = 0.3  # × size: FFHQ's padding width; fully median-coloured this far outside the photo
_BLUR_INSIDE_RATIO = 3.0  # the blur ramp starts BORDER_RAMP / 3 inside the photo, as FFHQ's ``mask * 3 + 1``
_MAX_8BIT = 255.0
_HALF_PIXEL = 0.5


# ----------------------------------------------------------------------------------------------
# Crop geometry (pure functions on landmarks)


def ffhq_roll_rad(landmarks_px: Tensor) -> Tensor:
    """Angle of FFHQ's crop x axis in the photo, radians (``N×5×2`` landmarks → ``N``).

    Convention:
        FFHQ's ``recreate_aligned_images`` uses ``x = eye_to_eye − rot90(eye_to_mouth)``: the mean
        of the eye line and the normal of the eye–mouth line, so neither a squint nor a crooked
        mouth alone sets the roll. Angles are measured in image coordinates (``y`` down), so a
        positive angle is a clockwise roll on screen; the crop rotates by its negative.
    """
    eye_left, eye_right = landmarks_px[:, LEFT_EYE], landmarks_px[:, RIGHT_EYE]  # N×2 each
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (landmarks_px[:, MOUTH_LEFT] + landmarks_px[:, MOUTH_RIGHT] - eye_left - eye_right) / 2
    # (dx, dy) ↦ (dy, −dx) turns the downward eye-to-mouth vector into the face's rightward axis.
    axis = eye_to_eye + torch.stack([eye_to_mouth[:, 1], -eye_to_mouth[:, 0]], dim=-1)  # N×2
    return torch.atan2(axis[:, 1], axis[:, 0])


def pos_fit(landmarks_px: Tensor) -> tuple[Tensor, Tensor]:
    """Deep3DFaceRecon's ``POS``: the orthographic fit of the Basel mean face's five points to ``N×5×2`` landmarks.

    Each image axis is fitted separately, ``x_k = a·X_k + t_x`` and ``y_k = b·X_k + t_y`` (``X_k`` the
    3D points in decimetres, ``a``, ``b`` free 3-vectors), by least squares.

    Returns:
        ``N×2`` image of the model's origin ``(t_x, t_y)``, pixels, and ``N`` scales
        ``(‖a‖ + ‖b‖) / 2``, pixels per decimetre.
    """
    model_dm = torch.tensor(LANDMARKS_BFM_DM, dtype=torch.float64)  # 5×3
    design = torch.cat([model_dm, torch.ones(NUM_LANDMARKS, 1, dtype=torch.float64)], dim=1)  # 5×4
    coefficients = torch.linalg.pinv(design) @ landmarks_px.to(torch.float64)  # N×4×2: rows a (or b), then t
    scale = torch.linalg.vector_norm(coefficients[:, :3], dim=1).mean(dim=1)  # N
    return coefficients[:, 3], scale


def eg3d_crop_matrix(
    landmarks_px: Tensor,
    size: int,
    roll_rad: Tensor,
    target_size: int = TARGET_SIZE,
    rescale_factor: float = RESCALE_FACTOR,
    centre_crop_size: int = CENTRE_CROP_SIZE,
) -> Tensor:
    """``N×2×3`` maps ``photo px → crop px`` of ``align_img`` (module docstring) after levelling by ``−roll``.

    Args:
        landmarks_px: ``N×5×2`` points in the photo.
        size: side of the square crop, pixels.
        roll_rad: ``N`` roll of each face (:func:`ffhq_roll_rad`); the crop turns by its negative.
        target_size, rescale_factor, centre_crop_size: ``align_img``'s square and scale, and the
            centre that is resized to ``size``; EG3D's crop by default (Deep3DFaceRecon's own input:
            224, 102, 224).
    """
    cos, sin = torch.cos(roll_rad), torch.sin(roll_rad)  # N each
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # N×2×2, by −roll
    levelled = landmarks_px.to(torch.float64) @ rotation.transpose(1, 2)  # N×5×2
    origin, scale_px_per_dm = pos_fit(levelled)
    resize = rescale_factor / scale_px_per_dm  # N: photo px → target-image px
    # In the target image the origin sits at the centre, shifted by align_img's pixel conventions:
    # +½ photo px in x and −½ in y (y is measured from H − 1), +½ px of the floored crop box.
    flip = torch.tensor([_HALF_PIXEL, -_HALF_PIXEL], dtype=torch.float64)
    centre = target_size / 2 + _HALF_PIXEL + resize[:, None] * flip  # N×2, target px, pixel-edge coordinates
    to_output = size / centre_crop_size  # target px → crop px, about the centre crop
    linear = (to_output * resize)[:, None, None] * rotation  # N×2×2
    # crop_px = to_output · (resize · (levelled − origin) + centre − (target − centre crop) / 2) − ½
    margin = (target_size - centre_crop_size) / 2
    shift = to_output * (centre - margin - resize[:, None] * origin) - _HALF_PIXEL  # N×2
    return torch.cat([linear, shift[..., None]], dim=-1)


def transform_points(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply ``N×2×3`` affine maps to ``N×K×2`` points."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


class CropTransform(NamedTuple):
    """Where a face's crop is cut."""

    matrix: Tensor
    """``N×2×3`` photo px → crop px."""
    landmarks_px: Tensor
    """``N×5×2`` landmarks in the crop."""


def eg3d_landmarks(landmarks_px: Tensor) -> Tensor:
    """MTCNN's points as EG3D's ``batch_mtcnn.py`` hands them to ``align_img``: the ``mtcnn`` package
    it uses truncates every keypoint to whole pixels (``int()``), which moves EG3D's crop by half a
    photo pixel on average. Measured on 9 video frames with EG3D's own detections
    (``benchmarks/README.md``): truncating ours brings our crop 1.8 instead of 2.2 px (mean, at
    512²) from the crop EG3D's detections give."""
    return torch.trunc(landmarks_px)


def crop_transform(landmarks_px: Tensor, size: int = DEFAULT_SIZE) -> CropTransform:
    """The EG3D crop (module docstring) of ``N×5×2`` photo landmarks, for ``size × size`` crops (float64)."""
    if landmarks_px.ndim != 3 or landmarks_px.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected N×{NUM_LANDMARKS}×2 landmarks, got shape {tuple(landmarks_px.shape)}")
    landmarks = landmarks_px.to(torch.float64)
    matrix = eg3d_crop_matrix(landmarks, size, ffhq_roll_rad(landmarks))
    return CropTransform(matrix, transform_points(matrix, landmarks))


# ----------------------------------------------------------------------------------------------
# Resampling


class Crop(NamedTuple):
    """A resampled crop."""

    pixels: np.ndarray
    """``size×size×3`` uint8 RGB."""
    magnification: float
    """Crop pixels per photo pixel."""
    padded_fraction: float
    """Fraction of crop pixels outside the photo."""


def warp_photo(pixels: np.ndarray, matrix: Tensor, size: int) -> Crop:
    """Cut the crop ``matrix`` (``2×3``, photo px → crop px) out of an ``H×W×3`` uint8 photo.

    Convention:
        Pixel centres at integers in both images (:func:`hfgi3d.faces.warp_affine`). Only the part
        of the photo the crop needs is converted to float; it is first shrunk with antialiasing when
        the crop is smaller than the photo, then resampled by
        :func:`kornia.geometry.transform.warp_affine` (``align_corners=False``, kornia ≥ 0.9),
        bicubic when the crop is larger than the photo, bilinear otherwise. Beyond the photo it
        reads the photo mirrored about its outer pixel edges (``"reflection"`` padding), softened
        as FFHQ does (module docstring).
    """
    height, width = pixels.shape[:2]
    photo_to_crop = torch.cat([matrix.to(torch.float64), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    magnification = math.sqrt(abs(float(torch.linalg.det(photo_to_crop[:2, :2]))))
    crop_to_photo = torch.linalg.inv(photo_to_crop)  # 3×3
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    crop_pts = torch.stack([cols, rows], dim=-1).reshape(-1, 2)  # (S·S)×2, crop pixel centres
    photo_pts = crop_pts @ crop_to_photo[:2, :2].T + crop_to_photo[:2, 2]  # (S·S)×2, where each reads the photo
    x0, x1 = _needed_range(photo_pts[:, 0], width)
    y0, y1 = _needed_range(photo_pts[:, 1], height)
    region = torch.from_numpy(np.ascontiguousarray(pixels[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()  # 1×3×h×w
    region_to_photo = _scale_shift(1.0, 1.0, x0, y0)  # 3×3
    region_h, region_w = region.shape[-2:]
    if magnification < 1.0:  # shrink first: bilinear reads of a larger image alias
        small_h, small_w = max(1, round(region_h * magnification)), max(1, round(region_w * magnification))
        region = F.interpolate(region, size=(small_h, small_w), mode="bilinear", antialias=True, align_corners=False)
        # The shrunk pixel centre s lies at (s + 0.5)·step − 0.5 in the unshrunk region (pixel edges coincide).
        step_x, step_y = region_w / small_w, region_h / small_h
        region_to_photo = region_to_photo @ _scale_shift(step_x, step_y, step_x / 2 - 0.5, step_y / 2 - 0.5)
    region_to_crop = (photo_to_crop @ region_to_photo)[None, :2]  # 1×2×3
    mode = "bicubic" if magnification > 1.0 else "bilinear"
    # Sampled in float64 (the region is at most about the crop's size here), so that the grid's round-off
    # does not decide how a value rounds to 8 bits.
    crop = warp_affine(
        region.double(), region_to_crop, (size, size), mode=mode, padding_mode="reflection", align_corners=False
    ).float()  # 1×3×S×S
    # Signed distance to the photo's border (positive outside), in crop pixels.
    outside_x = torch.maximum(-0.5 - photo_pts[:, 0], photo_pts[:, 0] - (width - 0.5))
    outside_y = torch.maximum(-0.5 - photo_pts[:, 1], photo_pts[:, 1] - (height - 0.5))
    distance = (torch.maximum(outside_x, outside_y) * magnification).reshape(1, 1, size, size).float()
    padded = distance > 0
    if bool(padded.any()):
        crop = _soften_border(crop, distance, size)
    out = crop[0].clamp(0, _MAX_8BIT).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Crop(np.ascontiguousarray(out), magnification, float(padded.float().mean()))


def _scale_shift(scale_x: float, scale_y: float, shift_x: float, shift_y: float) -> Tensor:
    """``3×3`` map ``(x, y) ↦ (scale_x·x + shift_x, scale_y·y + shift_y)``, float64."""
    return torch.tensor([[scale_x, 0.0, shift_x], [0.0, scale_y, shift_y], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _needed_range(coords: Tensor, length: int) -> tuple[int, int]:
    """Pixel index range ``[lo, hi)`` that sampling at ``coords`` reads, reflections at the border included."""
    low, high = float(coords.min()), float(coords.max())
    overshoot_low = max(0.0, -0.5 - low)  # reflected back into the photo from its start ...
    overshoot_high = max(0.0, high - (length - 0.5))  # ... and from its end
    lo = math.floor(min(low, length - 0.5 - overshoot_high)) - 2  # 2 px: the bicubic kernel's reach
    hi = math.ceil(max(high, -0.5 + overshoot_low)) + 3
    lo = min(max(0, lo), length - 1)
    return lo, max(min(length, hi), lo + 1)


def _soften_border(crop: Tensor, distance: Tensor, size: int) -> Tensor:
    """FFHQ-like padding: blur near and beyond the photo's border, fade to the median colour far outside."""
    sigma = BORDER_BLUR_SIGMA * size
    kernel = 2 * math.ceil(3 * sigma) + 1
    blurred = gaussian_blur2d(crop, (kernel, kernel), (sigma, sigma), border_type="reflect")
    ramp = BORDER_RAMP * size
    blur_weight = (1 + _BLUR_INSIDE_RATIO * distance / ramp).clamp(0, 1)  # 1×1×S×S
    softened = crop + (blurred - crop) * blur_weight
    inside = (distance <= 0).expand_as(crop)
    colours = crop[inside].reshape(3, -1) if bool(inside.any()) else crop.reshape(3, -1)
    median = colours.median(dim=1).values.reshape(1, 3, 1, 1)
    fill_weight = (distance / ramp).clamp(0, 1)
    return softened + (median - softened) * fill_weight


# ----------------------------------------------------------------------------------------------
# One face


class AlignedFace(NamedTuple):
    """An EG3D-aligned crop and its camera."""

    pixels: np.ndarray
    """``size×size×3`` uint8 RGB."""
    landmarks_px: Tensor
    """``5×2`` landmarks in the crop."""
    matrix: Tensor
    """``2×3`` photo px → crop px."""
    pose: PoseEstimate
    """The camera (``pose.c25``, ``1×25``), which estimator gave it, its confidence and reprojection error."""
    magnification: float
    padded_fraction: float


def align_face(
    pixels: np.ndarray, landmarks_px: Tensor, size: int = DEFAULT_SIZE, estimator: PoseEstimator | None = None
) -> AlignedFace:
    """Crop one face of an ``H×W×3`` uint8 photo given its ``5×2`` landmarks (photo pixels), and pose it.

    Args:
        pixels: the photo.
        landmarks_px: MTCNN's five points, order of :data:`hfgi3d.faces.LANDMARK_NAMES`; the crop is
            cut from them truncated to whole pixels, as EG3D's (:func:`eg3d_landmarks`).
        size: crop side, pixels.
        estimator: pose from the crop (default :class:`hfgi3d.pose.PnPPoseEstimator`;
            :func:`hfgi3d.pose.mediapipe.default_pose_estimator` picks the most accurate installed one).
    """
    estimator = PnPPoseEstimator() if estimator is None else estimator
    matrix = crop_transform(eg3d_landmarks(landmarks_px)[None], size).matrix
    crop = warp_photo(pixels, matrix[0], size)
    aligned = transform_points(matrix, landmarks_px[None].to(matrix.dtype))[0].float()  # where they are in the crop
    return AlignedFace(
        pixels=crop.pixels,
        landmarks_px=aligned,
        matrix=matrix[0].float(),
        pose=estimator.estimate(crop.pixels, aligned),
        magnification=crop.magnification,
        padded_fraction=crop.padded_fraction,
    )
