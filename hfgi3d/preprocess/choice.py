"""Finding the faces of a photo (MTCNN, :mod:`hfgi3d.faces`) and picking the one to align.

Policies:
    * A face counts when MTCNN's score is at least :data:`MIN_FACE_SCORE` and its box is at least
      ``min_face_px`` on its shorter side; smaller faces are ignored (a photo whose faces are all
      smaller is an error, ``face_too_small``).
    * Several faces: the most confident is kept and a warning names it (``face_index=K`` keeps the
      K-th most confident instead; ``single_face`` makes several faces an error, ``several_faces``).

Convention:
    Boxes and landmarks are in the photo's pixels, pixel ``(col, row)`` centred at ``(col, row)``
    (:mod:`hfgi3d.faces`), also when detection ran on a shrunk copy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image
from torch import Tensor

from hfgi3d.faces import Detections, detect_faces
from hfgi3d.preprocess.report import PreprocessError

MIN_FACE_SCORE = 0.9
"""MTCNN probability from which a detection counts as a face (its own last-stage threshold is 0.7; the
band in between is mostly faces in posters, patterns and profile fragments)."""
DETECT_MAX_SIDE_PX = 2048
"""Detection runs on a copy shrunk to this longer side (MTCNN's cost grows with the pixel count). A face of
64 px (the default ``--min_face_px``) in a 6000-px photo is still ~22 px there, above MTCNN's 20-px minimum."""


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
            f"the face in {name} is {largest:.0f} px, below --min_face_px {min_face_px}: pass a higher-resolution "
            "photo or lower --min_face_px (the crop will be blurry)",
        )
    if face_index >= len(faces):
        raise PreprocessError(
            "face_index",
            f"--face_index {face_index} but {name} has {len(faces)} face(s) (counted from 0, most confident first): "
            f"pass --face_index {len(faces) - 1} or less",
        )
    warnings: tuple[str, ...] = ()
    if len(faces) > 1:
        if single_face:
            raise PreprocessError(
                "several_faces",
                f"{name} has {len(faces)} faces and --single_face is set: crop the photo to one face, or drop "
                "--single_face to keep the most confident one (or choose with --face_index)",
            )
        chosen = detections.scores[faces[face_index]]
        warnings = (
            f"{len(faces)} faces found; kept face {face_index} (score {float(chosen):.3f}, box "
            f"{_box_text(detections.boxes[faces[face_index]])}): pass --face_index to choose another one",
        )
    return FaceChoice(faces[face_index], len(faces), warnings)


def _box_sides(boxes: Tensor) -> list[float]:
    """Shorter side of each ``N×4`` box, pixels."""
    return torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist()


def _box_text(box: Tensor) -> str:
    x0, y0, x1, y1 = (round(v) for v in box.tolist())
    return f"x {x0}–{x1}, y {y0}–{y1}"
