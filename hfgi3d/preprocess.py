"""Photos → EG3D inputs: aligned face crops and their cameras (``python -m hfgi3d preprocess IN OUT``).

Per photo: read it upright as 8-bit RGB (:func:`load_photo`), find faces with MTCNN
(:func:`detect_in_photo`), pick one (:func:`select_face`), cut the EG3D-aligned crop and estimate
its camera (:func:`align_face`), then write ``OUT/<stem>.png`` and its label in ``OUT/dataset.json``
(EG3D's ``{"labels": [[name, c25], ...]}``, read by :func:`hfgi3d.data.inputs.load_camera`).
:func:`preprocess` runs a photo or a folder, never stops on a bad photo, and writes
``OUT/preprocess_report.json`` listing what was processed and what was skipped, and why.

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

    * rotation: the face's FFHQ quad x axis (above) is turned onto the template's (level within
      0.08°) — the roll removal EG3D's training crops have (and its in-the-wild script lacks).
      The axis averages the eye line and the normal of the eye–mouth line, so on a turned face,
      whose mouth shifts sideways against the eyes, the eye line stays level to ~1° (yaw 0.3 rad);
    * scale and shift: least squares (rotation fixed) of the five MTCNN landmarks onto the
      canonical 3D landmarks of :mod:`hfgi3d.pose` *projected by the face's own camera*: first
      the frontal camera, then the camera estimated from that crop. This is the role ``POS``
      plays in ``align_img`` (an orthographic 3D fit, so a turned face is not re-scaled by its
      foreshortening), done with EG3D's perspective camera so that crop and camera agree: a
      face shaped like the mean face lands exactly where its camera label projects it. For a
      frontal face the template is eyes ``(186.6, 186.3)``, ``(324.0, 186.5)``, nose
      ``(256.3, 261.0)``, mouth ``(199.2, 335.7)``, ``(311.0, 335.7)`` px at 512² (scales with
      ``size``), ~1 % larger and ~5 px higher than ``align_img``'s (see
      :func:`hfgi3d.pose.canonical_landmarks_world`);
    * output ``size × size`` (default 512), pixel centres at integers as in :mod:`hfgi3d.faces`;
      bicubic when enlarging; when shrinking, the photo is first resized with antialiasing to the
      crop's scale (FFHQ's "shrink" step);
    * outside the photo: reflected photo, blended towards a blurred copy (σ = 2 % of the crop)
      and, farther out, towards the median colour of the crop's in-photo pixels — FFHQ's padding
      recipe (ramp 30 % of the crop, blur also 10 % inside the border), not bit-exact.

    Only the pose comes from the aligned crop (:class:`hfgi3d.pose.PnPPoseEstimator`, or any
    :class:`hfgi3d.pose.PoseEstimator`); the camera is an orbit camera ``orbit_c25(yaw, pitch)``,
    which has no roll. Seen from an orbit camera that is turned *and* raised or lowered, an upright
    head's eye line is not level (1.9° at yaw 0.3, pitch 0.1 rad; 6.8° at yaw 0.5, pitch 0.25), so
    a levelled crop of such a face disagrees with its camera by that in-plane rotation (the pose
    fit ignores it: roll is one of its nuisances). EG3D's own labels carry that roll; ours cannot.

Policies:
    * Several faces: the most confident is kept and the report warns (``--face-index K`` keeps the
      K-th most confident instead; ``--single-face`` makes several faces a per-photo error). A face
      counts when MTCNN's score is at least :data:`MIN_FACE_SCORE` and its box is at least
      ``min_face_px`` on its shorter side; smaller faces are ignored (a photo whose faces are all
      smaller is an error).
    * Photos: grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB, transparency
      is composited on white, EXIF orientation is applied, only the first frame of an animation
      is read — each noted in the report. Photos smaller than :data:`MIN_PHOTO_SIDE_PX`, corrupt
      or truncated files and non-images are per-photo errors. In a folder, only files with an
      image extension (:data:`IMAGE_SUFFIXES`) are read; others are listed as skipped.
    * Existing crops in OUT are kept unless ``overwrite`` (checked per photo, before any work);
      ``dataset.json`` is merged (labels of photos not processed in this run are kept) and
      ``preprocess_report.json`` describes the last run. Every file is written to a temporary
      name and renamed, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from kornia.filters import gaussian_blur2d
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from tqdm import tqdm

from hfgi3d.cameras import frontal_c25, yaw_pitch_of
from hfgi3d.faces import (
    LEFT_EYE,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NUM_LANDMARKS,
    RIGHT_EYE,
    Detections,
    detect_faces,
    make_detector,
)
from hfgi3d.pose import PnPPoseEstimator, PoseEstimator, canonical_landmarks_px

DEFAULT_SIZE = 512
"""Side of the crops, pixels: EG3D's FFHQ models are 512²."""
MIN_SIZE = 64
DATASET_JSON = "dataset.json"
REPORT_JSON = "preprocess_report.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")
"""Extensions read from an input folder (case-insensitive); a single file given as IN is always tried."""

MIN_PHOTO_SIDE_PX = 64
"""Photos with a shorter side are rejected before detection: no usable face fits in them."""
DEFAULT_MIN_FACE_PX = 64
"""Faces whose MTCNN box is smaller (shorter side, photo pixels) are ignored: the 512² crop would enlarge
them ~8× and EG3D would invert blur. Lower it with ``--min-face-px`` for small faces."""
MIN_FACE_SCORE = 0.9
"""MTCNN probability from which a detection counts as a face (its own last-stage threshold is 0.7; the
band in between is mostly faces in posters, patterns and profile fragments)."""
DETECT_MAX_SIDE_PX = 2048
"""Detection runs on a copy shrunk to this longer side (MTCNN's cost grows with the pixel count). A face of
``DEFAULT_MIN_FACE_PX`` in a 6000-px photo is still ~22 px there, above MTCNN's 20-px minimum."""

POSE_ITERATIONS = 1
"""Crop re-fits to the template seen from the estimated camera (one is enough: the PnP is invariant to the
crop's scale, shift and roll, so its estimate does not change when the crop is re-fitted)."""
BORDER_BLUR_SIGMA = 0.02  # × size: FFHQ blurs the padding with σ = 0.02 · quad size
BORDER_RAMP = 0.3  # × size: FFHQ's padding width; fully median-coloured this far outside the photo
_BLUR_INSIDE_RATIO = 3.0  # the blur ramp starts BORDER_RAMP / 3 inside the photo, as FFHQ's ``mask * 3 + 1``

WARN_MAGNIFICATION = 2.0
"""The report warns when the crop enlarges the photo more than this (a blurry input)."""
WARN_PADDED_FRACTION = 0.2
"""The report warns when more than this fraction of the crop lies outside the photo."""
WARN_YAW_RAD = 0.8
WARN_PITCH_RAD = 0.5
WARN_RESIDUAL = 0.05
"""× size: the report warns when the landmarks miss the posed mean face by more (RMS): a broad smile reaches
~0.03 (the astronaut photo: 16 px at 512²); beyond are grimaces, occlusions and false detections."""

_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length and type (8) + width and height (8)
_MAX_8BIT = 255.0
_MAX_16BIT = 65535.0
_WHITE = (255, 255, 255, 255)

SkipCode = Literal[
    "not_an_image",  # PIL cannot identify the file, or a folder entry without an image extension
    "unreadable",  # corrupt or truncated image data
    "too_small",  # photo smaller than MIN_PHOTO_SIDE_PX
    "no_face",  # no detection above MIN_FACE_SCORE
    "face_too_small",  # faces found, all below min_face_px
    "several_faces",  # more than one face with --single-face
    "face_index",  # --face-index beyond the faces found
    "exists",  # OUT/<stem>.png exists and overwrite is off
    "name_clash",  # another input of the batch has the same stem, or the crop would replace the input
    "internal_error",  # an unexpected exception (a bug): the batch goes on
]


class PreprocessError(ValueError):
    """A photo cannot be processed; :attr:`code` says why in one word, the message names the file and the fix."""

    def __init__(self, code: SkipCode, message: str) -> None:
        super().__init__(message)
        self.code: SkipCode = code
        self.notes: tuple[str, ...] = ()
        """What was done to the photo before the error (conversions), for the report."""


@dataclass(frozen=True)
class PreprocessOptions:
    """What ``python -m hfgi3d preprocess`` lets the user choose (see the module docstring's policies)."""

    size: int = DEFAULT_SIZE
    face_index: int = 0
    single_face: bool = False
    overwrite: bool = False
    min_face_px: int = DEFAULT_MIN_FACE_PX

    def __post_init__(self) -> None:
        if self.size < MIN_SIZE:
            raise ValueError(f"--size must be at least {MIN_SIZE} px, got {self.size}")
        if self.face_index < 0:
            raise ValueError(f"--face-index counts from 0 (the most confident face), got {self.face_index}")
        if self.min_face_px < 1:
            raise ValueError(f"--min-face-px must be positive, got {self.min_face_px}")


@dataclass(frozen=True)
class ProcessedImage:
    """One photo that produced a crop (an entry of ``preprocess_report.json``)."""

    input: str
    output: str
    face_index: int
    num_faces: int
    face_score: float
    yaw_rad: float
    pitch_rad: float
    residual_px: float
    """RMS distance between the crop's landmarks and the mean face seen from the estimated camera."""
    magnification: float
    """Crop pixels per photo pixel."""
    padded_fraction: float
    """Fraction of the crop outside the photo (filled)."""
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedImage:
    """One photo that produced nothing, and why."""

    input: str
    code: SkipCode
    reason: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreprocessReport:
    """What :func:`preprocess` did; :meth:`to_json` is ``preprocess_report.json``."""

    input: str
    output_dir: str
    options: PreprocessOptions
    processed: tuple[ProcessedImage, ...] = ()
    skipped: tuple[SkippedImage, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "input": self.input,
            "output_dir": self.output_dir,
            "options": asdict(self.options),
            "num_processed": len(self.processed),
            "num_skipped": len(self.skipped),
            "processed": [asdict(entry) for entry in self.processed],
            "skipped": [asdict(entry) for entry in self.skipped],
        }


# ----------------------------------------------------------------------------------------------
# Reading photos


class Photo(NamedTuple):
    """An upright photo as ``H×W×3`` ``uint8`` RGB, with what was done to get there."""

    pixels: np.ndarray
    notes: tuple[str, ...]


def load_photo(path: Path) -> Photo:
    """Read any image PIL understands as upright 8-bit RGB (module docstring, policies).

    Raises:
        PreprocessError: ``not_an_image`` (PIL cannot identify it) or ``unreadable`` (corrupt, truncated).
    """
    notes: list[str] = []
    try:
        with Image.open(path) as handle:
            num_frames = getattr(handle, "n_frames", 1)
            if num_frames > 1:
                notes.append(f"{num_frames} frames: used the first")
            orientation = handle.getexif().get(_EXIF_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(handle)  # loads the pixels: truncation surfaces here
    except UnidentifiedImageError as error:
        raise PreprocessError(
            "not_an_image",
            f"{path.name} is not an image (PIL cannot identify it): remove it from the input or re-export it",
        ) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PreprocessError(
            "unreadable",
            f"cannot read {path.name} ({error}): the file is corrupt or truncated; re-export or re-download it",
        ) from error
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} applied")
    if _png_bit_depth(path) == 16 and upright.mode == "RGB":
        notes.append("16-bit PNG read as 8 bits per channel")
    pixels, conversion_notes = _to_rgb8(upright)
    return Photo(pixels, (*notes, *conversion_notes))


def _png_bit_depth(path: Path) -> int | None:
    """Bits per channel from a PNG's header (PIL silently reads 16-bit RGB PNGs as 8-bit RGB)."""
    with open(path, "rb") as handle:
        header = handle.read(_PNG_BIT_DEPTH_OFFSET + 1)
    if not header.startswith(_PNG_SIGNATURE) or len(header) <= _PNG_BIT_DEPTH_OFFSET:
        return None
    return header[_PNG_BIT_DEPTH_OFFSET]


def _to_rgb8(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """``H×W×3`` uint8 RGB from any PIL mode, with notes on what changed."""
    notes: list[str] = []
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16-bit, 32-bit integer or float grayscale
        values = np.asarray(image, dtype=np.float64)  # H×W
        peak = float(np.nanmax(values)) if values.size else 0.0
        if mode == "F":
            full_scale = 1.0 if peak <= 1.0 else _MAX_8BIT
        else:  # "I" may hold 8-bit data (some TIFFs), 16-bit data or wider; scale to its container
            full_scale = _MAX_8BIT if peak <= _MAX_8BIT else _MAX_16BIT if peak <= _MAX_16BIT else peak
        gray = np.clip(np.rint(np.nan_to_num(values) * (_MAX_8BIT / full_scale)), 0, _MAX_8BIT).astype(np.uint8)
        notes.append(f"{mode} grayscale reduced to 8 bits and converted to RGB")
        return np.repeat(gray[..., None], 3, axis=2), notes
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        composited = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
        notes.append("transparency composited on white" if alpha.min() < _MAX_8BIT else "opaque alpha channel dropped")
        rgb = composited.convert("RGB")
    else:
        rgb = image.convert("RGB")
    if mode in ("1", "L", "LA", "La"):
        notes.append("grayscale converted to RGB")
    elif mode not in ("RGB", "RGBA", "RGBa", "RGBX"):
        notes.append(f"{mode} converted to RGB")
    return np.asarray(rgb, dtype=np.uint8).copy(), notes


# ----------------------------------------------------------------------------------------------
# Finding and choosing the face


def detect_in_photo(detector: MTCNN, pixels: np.ndarray) -> Detections:
    """All faces in an ``H×W×3`` uint8 photo (most confident first), in the photo's pixels.

    Photos larger than :data:`DETECT_MAX_SIDE_PX` are searched on a shrunk copy and the boxes and
    landmarks scaled back (MTCNN's landmarks come from a 48² resample of each face, so they lose
    nothing while the face stays well above 48 px).
    """
    height, width = pixels.shape[:2]
    shrink = min(1.0, DETECT_MAX_SIDE_PX / max(height, width))
    if shrink == 1.0:
        return detect_faces(detector, pixels)
    small_size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    small = np.asarray(Image.fromarray(pixels).resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    found = detect_faces(detector, small)
    scale = torch.tensor([width / small_size[0], height / small_size[1]])  # photo px per small px, x and y
    boxes = _rescale_points(found.boxes.reshape(-1, 2, 2), scale).reshape(-1, 4)  # N×4
    return Detections(boxes, found.scores, _rescale_points(found.landmarks, scale))


def _rescale_points(points: Tensor, scale: Tensor) -> Tensor:
    """``…×2`` points of a resized image back to the original (pixel centres at integers in both)."""
    return (points + 0.5) * scale - 0.5


class FaceChoice(NamedTuple):
    """The face :func:`select_face` picked."""

    detection: int
    """Index into the detections (most confident first)."""
    num_faces: int
    """Faces that count (score and size), including the chosen one."""
    warnings: tuple[str, ...]


def select_face(
    detections: Detections, name: str, *, face_index: int = 0, single_face: bool = False, min_face_px: int = 1
) -> FaceChoice:
    """Choose the ``face_index``-th most confident face that counts (module docstring, policies).

    Raises:
        PreprocessError: ``no_face``, ``face_too_small``, ``face_index`` or ``several_faces``.
    """
    confident = [i for i, score in enumerate(detections.scores.tolist()) if score >= MIN_FACE_SCORE]
    if not confident:
        best = (
            f" (best score {float(detections.scores.max()):.2f} < {MIN_FACE_SCORE})" if len(detections.scores) else ""
        )
        raise PreprocessError(
            "no_face",
            f"no face found in {name}{best}: pass a photo where one face is clearly visible, upright and at least "
            f"{min_face_px} px wide, or give the crop and camera yourself (--data.camera)",
        )
    sides = _box_sides(detections.boxes)  # N
    faces = [i for i in confident if sides[i] >= min_face_px]
    if not faces:
        largest = max(sides[i] for i in confident)
        raise PreprocessError(
            "face_too_small",
            f"the face in {name} is {largest:.0f} px, below --min-face-px {min_face_px}: pass a higher-resolution "
            "photo or lower --min-face-px (the crop will be blurry)",
        )
    if face_index >= len(faces):
        raise PreprocessError(
            "face_index",
            f"--face-index {face_index} but {name} has {len(faces)} face(s) (counted from 0, most confident first): "
            f"pass --face-index {len(faces) - 1} or less",
        )
    warnings: tuple[str, ...] = ()
    if len(faces) > 1:
        if single_face:
            raise PreprocessError(
                "several_faces",
                f"{name} has {len(faces)} faces and --single-face is set: crop the photo to one face, or drop "
                "--single-face to keep the most confident one (or choose with --face-index)",
            )
        chosen = detections.scores[faces[face_index]]
        warnings = (
            f"{len(faces)} faces found; kept face {face_index} (score {float(chosen):.3f}, box "
            f"{_box_text(detections.boxes[faces[face_index]])}): pass --face-index to choose another one",
        )
    return FaceChoice(faces[face_index], len(faces), warnings)


def _box_sides(boxes: Tensor) -> list[float]:
    """Shorter side of each ``N×4`` box, pixels."""
    return torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist()


def _box_text(box: Tensor) -> str:
    x0, y0, x1, y1 = (round(v) for v in box.tolist())
    return f"x {x0}–{x1}, y {y0}–{y1}"


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


def fit_crop_matrix(landmarks_px: Tensor, template_px: Tensor, roll_rad: Tensor) -> Tensor:
    """``N×2×3`` maps ``photo px → crop px``: rotate by ``−roll``, then the least-squares scale and shift.

    Args:
        landmarks_px: ``N×K×2`` points in the photo.
        template_px: ``N×K×2`` (or ``K×2``) target points in the crop.
        roll_rad: ``N`` roll of each face (:func:`ffhq_roll_rad`).
    """
    cos, sin = torch.cos(roll_rad), torch.sin(roll_rad)  # N each
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # N×2×2, by −roll
    rotated = landmarks_px @ rotation.transpose(1, 2)  # N×K×2
    template = template_px.to(rotated).expand_as(rotated)
    rotated_mean, template_mean = rotated.mean(dim=1), template.mean(dim=1)  # N×2
    rotated_c, template_c = rotated - rotated_mean[:, None], template - template_mean[:, None]
    scale = (rotated_c * template_c).sum(dim=(1, 2)) / rotated_c.square().sum(dim=(1, 2))  # N
    translation = template_mean - scale[:, None] * rotated_mean  # N×2
    return torch.cat([scale[:, None, None] * rotation, translation[..., None]], dim=-1)


def transform_points(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply ``N×2×3`` affine maps to ``N×K×2`` points."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


class CropTransform(NamedTuple):
    """Where a face's crop is cut and the camera that sees it."""

    matrix: Tensor
    """``N×2×3`` photo px → crop px."""
    c25: Tensor
    """``N×25`` camera labels of the crops."""
    landmarks_px: Tensor
    """``N×5×2`` landmarks in the crop."""


def crop_transform(landmarks_px: Tensor, size: int, estimator: PoseEstimator) -> CropTransform:
    """The EG3D crop (module docstring) and camera of ``N×5×2`` photo landmarks, for ``size × size`` crops."""
    if landmarks_px.ndim != 3 or landmarks_px.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected N×{NUM_LANDMARKS}×2 landmarks, got shape {tuple(landmarks_px.shape)}")
    landmarks = landmarks_px.to(torch.float64)
    template = canonical_landmarks_px(frontal_c25().to(torch.float64), size)  # 1×5×2
    # FFHQ's axis of the template itself is 0.08° off horizontal (the mean face is not quite symmetric):
    # turning the face's axis onto the template's lets a face shaped like the template land exactly on it.
    roll = ffhq_roll_rad(landmarks) - ffhq_roll_rad(template)  # N
    matrix = fit_crop_matrix(landmarks, template, roll)
    for _ in range(POSE_ITERATIONS):
        c25 = estimator(transform_points(matrix, landmarks), size)
        matrix = fit_crop_matrix(landmarks, canonical_landmarks_px(c25.to(torch.float64), size), roll)
    aligned = transform_points(matrix, landmarks)
    return CropTransform(matrix, estimator(aligned, size), aligned)


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
        the crop is smaller than the photo, and read bicubically when it is larger. Outside the
        photo: the reflected photo softened as FFHQ does (module docstring).
    """
    height, width = pixels.shape[:2]
    matrix = matrix.to(torch.float64)
    magnification = math.sqrt(abs(float(torch.linalg.det(matrix[:, :2]))))
    inverse = _invert_affine(matrix)
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    crop_pts = torch.stack([cols, rows], dim=-1).reshape(-1, 2)  # (S·S)×2, crop pixel centres
    photo_pts = crop_pts @ inverse[:, :2].T + inverse[:, 2]  # (S·S)×2, where each reads the photo
    x0, x1 = _needed_range(photo_pts[:, 0], width)
    y0, y1 = _needed_range(photo_pts[:, 1], height)
    region = torch.from_numpy(np.ascontiguousarray(pixels[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()  # 1×3×h×w
    local_pts = photo_pts - torch.tensor([x0, y0], dtype=torch.float64)
    region_h, region_w = region.shape[-2:]
    if magnification < 1.0:  # shrink first: bilinear reads of a larger image alias
        small_h, small_w = max(1, round(region_h * magnification)), max(1, round(region_w * magnification))
        region = F.interpolate(region, size=(small_h, small_w), mode="bilinear", antialias=True, align_corners=False)
        local_pts = (local_pts + 0.5) * torch.tensor(
            [small_w / region_w, small_h / region_h], dtype=torch.float64
        ) - 0.5
        region_h, region_w = small_h, small_w
    extent = torch.tensor([region_w, region_h], dtype=torch.float64)
    grid = ((2 * local_pts + 1) / extent - 1).reshape(1, size, size, 2).float()
    mode = "bicubic" if magnification > 1.0 else "bilinear"
    crop = F.grid_sample(region, grid, mode=mode, padding_mode="reflection", align_corners=False)  # 1×3×S×S
    # Signed distance to the photo's border (positive outside), in crop pixels.
    outside_x = torch.maximum(-0.5 - photo_pts[:, 0], photo_pts[:, 0] - (width - 0.5))
    outside_y = torch.maximum(-0.5 - photo_pts[:, 1], photo_pts[:, 1] - (height - 0.5))
    distance = (torch.maximum(outside_x, outside_y) * magnification).reshape(1, 1, size, size).float()
    padded = distance > 0
    if bool(padded.any()):
        crop = _soften_border(crop, distance, size)
    out = crop[0].clamp(0, _MAX_8BIT).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Crop(np.ascontiguousarray(out), magnification, float(padded.float().mean()))


def _invert_affine(matrix: Tensor) -> Tensor:
    linear_inv = torch.linalg.inv(matrix[:, :2])
    return torch.cat([linear_inv, -(linear_inv @ matrix[:, 2:])], dim=1)


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
    c25: Tensor
    """``1×25`` camera label."""
    landmarks_px: Tensor
    """``5×2`` landmarks in the crop."""
    matrix: Tensor
    """``2×3`` photo px → crop px."""
    residual_px: float
    magnification: float
    padded_fraction: float


def align_face(
    pixels: np.ndarray, landmarks_px: Tensor, size: int = DEFAULT_SIZE, estimator: PoseEstimator | None = None
) -> AlignedFace:
    """Crop one face of an ``H×W×3`` uint8 photo given its ``5×2`` landmarks (photo pixels), and pose it.

    Args:
        pixels: the photo.
        landmarks_px: MTCNN's five points, order of :data:`hfgi3d.faces.LANDMARK_NAMES`.
        size: crop side, pixels.
        estimator: pose from crop landmarks (default :class:`hfgi3d.pose.PnPPoseEstimator`).
    """
    estimator = PnPPoseEstimator() if estimator is None else estimator
    transform = crop_transform(landmarks_px[None], size, estimator)
    crop = warp_photo(pixels, transform.matrix[0], size)
    expected = canonical_landmarks_px(transform.c25.to(torch.float64), size)  # 1×5×2
    residual = float((transform.landmarks_px - expected).square().sum(-1).mean().sqrt())
    return AlignedFace(
        pixels=crop.pixels,
        c25=transform.c25.float(),
        landmarks_px=transform.landmarks_px[0].float(),
        matrix=transform.matrix[0].float(),
        residual_px=residual,
        magnification=crop.magnification,
        padded_fraction=crop.padded_fraction,
    )


def _quality_warnings(face: AlignedFace, yaw: float, pitch: float, size: int) -> list[str]:
    warnings = []
    if face.magnification > WARN_MAGNIFICATION:
        warnings.append(f"the crop enlarges the photo {face.magnification:.1f}×: expect a blurry input")
    if face.padded_fraction > WARN_PADDED_FRACTION:
        warnings.append(
            f"{face.padded_fraction:.0%} of the crop lies outside the photo (filled by reflection and blur)"
        )
    if abs(yaw) > WARN_YAW_RAD or abs(pitch) > WARN_PITCH_RAD:
        warnings.append(
            f"extreme pose (yaw {yaw:+.2f}, pitch {pitch:+.2f} rad): five landmarks are unreliable here; "
            "pass the camera yourself if you know it"
        )
    if face.residual_px > WARN_RESIDUAL * size:
        warnings.append(
            f"the landmarks fit the posed mean face poorly ({face.residual_px:.1f} px RMS): unusual expression, "
            "occlusion or a false detection — check the crop"
        )
    return warnings


# ----------------------------------------------------------------------------------------------
# Batches


def list_inputs(input_path: Path) -> list[Path]:
    """The photo, or the files of the folder (sorted, hidden files left out; not recursive)."""
    if input_path.is_file():
        return [input_path]
    if input_path.is_dir():
        return sorted(path for path in input_path.iterdir() if path.is_file() and not path.name.startswith("."))
    raise FileNotFoundError(f"input not found: {input_path}: pass a photo or a folder of photos")


def preprocess(
    input_path: str | Path,
    output_dir: str | Path,
    options: PreprocessOptions | None = None,
    *,
    estimator: PoseEstimator | None = None,
    detector: MTCNN | None = None,
    progress: bool = False,
) -> PreprocessReport:
    """Align a photo or a folder of photos into ``output_dir`` (module docstring).

    Args:
        input_path: a photo, or a folder whose image files are all processed.
        output_dir: receives ``<stem>.png`` crops, ``dataset.json`` and ``preprocess_report.json``.
        options: crop size, face choice and overwrite policy (defaults: :class:`PreprocessOptions`).
        estimator: pose from crop landmarks (default :class:`hfgi3d.pose.PnPPoseEstimator`).
        detector: from :func:`hfgi3d.faces.make_detector` (built on the CPU when needed and not given).
        progress: show a tqdm progress bar.

    Returns:
        What was processed and skipped (also written to ``preprocess_report.json``).

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: ``output_dir`` is a file or the input folder itself, or holds an invalid ``dataset.json``.
    """
    options = PreprocessOptions() if options is None else options
    input_path, output_dir = Path(input_path), Path(output_dir)
    inputs = list_inputs(input_path)
    _check_output_dir(input_path, output_dir)
    labels = _read_labels(output_dir / DATASET_JSON)
    output_dir.mkdir(parents=True, exist_ok=True)
    estimator = PnPPoseEstimator() if estimator is None else estimator
    from_folder = input_path.is_dir()
    processed: list[ProcessedImage] = []
    skipped: list[SkippedImage] = []
    claimed: dict[str, Path] = {}
    try:
        for path in tqdm(inputs, desc="preprocess", unit="photo", disable=not progress):
            name = f"{path.stem}.png"
            try:
                if from_folder and path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise PreprocessError(
                        "not_an_image",
                        f"{path.name}: not an image extension ({', '.join(IMAGE_SUFFIXES)}); rename it if it is one",
                    )
                if name in claimed:
                    raise PreprocessError(
                        "name_clash",
                        f"{path.name} would also be written as {name}, like {claimed[name].name}: rename one of them",
                    )
                claimed[name] = path
                if (output_dir / name).resolve() == path.resolve():
                    raise PreprocessError(
                        "name_clash", f"{path.name} would be replaced by its own crop: pass another output folder"
                    )
                if (output_dir / name).exists() and not options.overwrite:
                    raise PreprocessError(
                        "exists", f"{output_dir / name} exists: pass --overwrite to replace it (its label is kept)"
                    )
                if detector is None:
                    detector = make_detector()
                entry, c25 = _process_photo(path, output_dir / name, detector, estimator, options)
                processed.append(entry)
                labels[name] = [float(v) for v in c25[0].tolist()]
            except PreprocessError as error:
                skipped.append(SkippedImage(str(path), error.code, str(error), error.notes))
            except Exception as error:  # a bug must not cost the rest of a long batch; the report names it
                message = f"unexpected {type(error).__name__} on {path.name}: {error} (please report this)"
                skipped.append(SkippedImage(str(path), "internal_error", message))
    finally:
        report = PreprocessReport(str(input_path), str(output_dir), options, tuple(processed), tuple(skipped))
        _write_json(output_dir / DATASET_JSON, {"labels": [[name, labels[name]] for name in sorted(labels)]})
        _write_json(output_dir / REPORT_JSON, report.to_json())
    return report


def _process_photo(
    path: Path, output_path: Path, detector: MTCNN, estimator: PoseEstimator, options: PreprocessOptions
) -> tuple[ProcessedImage, Tensor]:
    """Crop, pose and write one photo; errors carry the notes gathered so far."""
    photo = load_photo(path)
    try:
        height, width = photo.pixels.shape[:2]
        if min(height, width) < MIN_PHOTO_SIDE_PX:
            raise PreprocessError(
                "too_small",
                f"{path.name} is {width}×{height} px, below {MIN_PHOTO_SIDE_PX} px: pass the full-resolution photo",
            )
        detections = detect_in_photo(detector, photo.pixels)
        choice = select_face(
            detections,
            path.name,
            face_index=options.face_index,
            single_face=options.single_face,
            min_face_px=options.min_face_px,
        )
    except PreprocessError as error:
        error.notes = photo.notes
        raise
    face = align_face(photo.pixels, detections.landmarks[choice.detection], options.size, estimator)
    yaw, pitch = (float(angle[0]) for angle in yaw_pitch_of(face.c25[:, :16].reshape(-1, 4, 4)))
    _write_png(output_path, face.pixels)
    entry = ProcessedImage(
        input=str(path),
        output=output_path.name,
        face_index=options.face_index,
        num_faces=choice.num_faces,
        face_score=float(detections.scores[choice.detection]),
        yaw_rad=yaw,
        pitch_rad=pitch,
        residual_px=face.residual_px,
        magnification=face.magnification,
        padded_fraction=face.padded_fraction,
        notes=photo.notes,
        warnings=(*choice.warnings, *_quality_warnings(face, yaw, pitch, options.size)),
    )
    return entry, face.c25


def _check_output_dir(input_path: Path, output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {output_dir} is a file: pass a folder (it is created if missing)")
    if input_path.is_dir() and output_dir.resolve() == input_path.resolve():
        raise ValueError(
            f"output folder {output_dir} is the input folder: pass another one, crops would replace photos"
        )


def _read_labels(path: Path) -> dict[str, list[float]]:
    """Labels of an existing ``dataset.json``, keyed by file name (merged with this run's)."""
    if not path.exists():
        return {}
    try:
        content = json.loads(path.read_text())
        return {str(name): list(label) for name, label in content["labels"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} exists but is not an EG3D dataset.json ({error}): move it away or pick another output folder"
        ) from error


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    _write_atomic(path, buffer.getvalue())


def _write_json(path: Path, content: object) -> None:
    _write_atomic(path, (json.dumps(content, indent=1) + "\n").encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path`` (never a half-written file)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # open(), unlike mkstemp, honours the umask
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Summary


def format_summary(report: PreprocessReport) -> str:
    """A human-readable account of a run: counts, then every skipped photo with its reason, notes, warnings."""
    total = len(report.processed) + len(report.skipped)
    lines = [
        f"preprocess: {len(report.processed)} of {total} photo(s) aligned into {report.output_dir} "
        f"({DATASET_JSON}, {REPORT_JSON})"
    ]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)}:")
        lines += [f"  {Path(entry.input).name} [{entry.code}]: {entry.reason}" for entry in report.skipped]
    entries: list[ProcessedImage | SkippedImage] = [*report.processed, *report.skipped]
    notes = [(entry.input, note) for entry in entries for note in entry.notes]
    warnings = [(entry.input, warning) for entry in report.processed for warning in entry.warnings]
    lines += _titled("notes", notes) + _titled("warnings", warnings)
    return "\n".join(lines)


def _titled(title: str, items: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{title}:", *(f"  {Path(name).name}: {text}" for name, text in items)] if items else []
