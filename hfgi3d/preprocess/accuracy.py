"""How far :mod:`hfgi3d.preprocess` is from EG3D's own pipeline, on photos whose official cameras are known.

The photos are crops that EG3D's preprocessing made (MTCNN → Deep3DFaceRecon → ``align_img``), with
their ``dataset.json`` labels (``tests/data/eg3d_cameras``, see its ``PROVENANCE.md``). For each one,
:func:`measure_folder` measures

* the **crop round trip**: re-running the crop on a photo that is already an EG3D crop should
  give it back; the mean distance (crop pixels) between MTCNN's five landmarks and where the new
  crop puts them is how far it moves the face;
* the **pose error** of each estimator: yaw and pitch of the camera estimated from the new crop
  minus those of the official label (:func:`hfgi3d.cameras.yaw_pitch_of`, radians).

``benchmarks/pose_accuracy.py`` prints the table; ``tests/test_pose_accuracy.py`` checks it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from facenet_pytorch import MTCNN

from hfgi3d.cameras import split_c25, yaw_pitch_of
from hfgi3d.pose import PoseEstimator
from hfgi3d.preprocess.choice import detect_in_photo, select_face
from hfgi3d.preprocess.crop import DEFAULT_SIZE, align_face, crop_transform, eg3d_landmarks, transform_points
from hfgi3d.preprocess.photos import load_photo
from hfgi3d.preprocess.report import DATASET_JSON


class PoseError(NamedTuple):
    """One estimator on one photo."""

    estimator: str
    """The estimator that answered (a fallback names itself)."""
    yaw_error_rad: float
    pitch_error_rad: float
    confidence: float
    reprojection_px: float


class PhotoAccuracy(NamedTuple):
    """One photo: its official pose, the crop round trip and every estimator's error."""

    name: str
    yaw_rad: float
    pitch_rad: float
    round_trip_px: float
    """Mean distance between the photo's landmarks and the re-cropped ones, pixels of a ``size``² crop."""
    errors: dict[str, PoseError]
    """Keyed by the name the estimator was given to :func:`measure_folder`."""


def read_labels(folder: Path) -> dict[str, torch.Tensor]:
    """``{file name: 1×25 float64 label}`` of a folder's EG3D ``dataset.json``."""
    labels = json.loads((folder / DATASET_JSON).read_text())["labels"]
    return {str(name): torch.tensor(label, dtype=torch.float64)[None] for name, label in labels}


def measure_folder(
    folder: Path, estimators: Mapping[str, PoseEstimator], detector: MTCNN, size: int = DEFAULT_SIZE
) -> list[PhotoAccuracy]:
    """Crop round trip and pose errors of every labelled photo of ``folder`` (module docstring).

    Raises:
        hfgi3d.preprocess.PreprocessError: MTCNN finds no face in a photo.
    """
    rows = []
    for name, label in sorted(read_labels(folder).items()):
        photo = load_photo(folder / name)
        detections = detect_in_photo(detector, photo.pixels)
        landmarks = detections.landmarks[select_face(detections, name).detection].double()  # 5×2, photo px
        to_crop = size / photo.pixels.shape[1]  # the photo is an EG3D crop: its own pixels, rescaled to size
        matrix = crop_transform(eg3d_landmarks(landmarks)[None], size).matrix  # as preprocess cuts it
        moved = transform_points(matrix, landmarks[None])[0] - (landmarks + 0.5) * to_crop + 0.5
        yaw_true, pitch_true = (float(angle[0]) for angle in yaw_pitch_of(split_c25(label)[0]))
        errors = {}
        for key, estimator in estimators.items():
            pose = align_face(photo.pixels, landmarks.float(), size, estimator).pose
            yaw, pitch = (float(angle[0]) for angle in yaw_pitch_of(split_c25(pose.c25.double())[0]))
            errors[key] = PoseError(
                pose.estimator, yaw - yaw_true, pitch - pitch_true, pose.confidence, pose.reprojection_px
            )
        rows.append(PhotoAccuracy(name, yaw_true, pitch_true, float(moved.norm(dim=-1).mean()), errors))
    return rows


class Summary(NamedTuple):
    """Mean and max of the absolute errors of one estimator over the photos, radians."""

    mean_yaw_rad: float
    max_yaw_rad: float
    mean_pitch_rad: float
    max_pitch_rad: float


def summarize(rows: Sequence[PhotoAccuracy], key: str) -> Summary:
    """:class:`Summary` of the estimator ``key`` over ``rows``."""
    yaw = [abs(row.errors[key].yaw_error_rad) for row in rows]
    pitch = [abs(row.errors[key].pitch_error_rad) for row in rows]
    return Summary(sum(yaw) / len(yaw), max(yaw), sum(pitch) / len(pitch), max(pitch))


def markdown_tables(rows: Sequence[PhotoAccuracy]) -> str:
    """Per photo (official pose, round trip, each estimator's Δyaw/Δpitch), then the summary per estimator."""
    keys = list(rows[0].errors) if rows else []
    header = ["photo", "yaw", "pitch", "round trip px"] + [f"{key} Δyaw / Δpitch" for key in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, f"{row.yaw_rad:+.3f}", f"{row.pitch_rad:+.3f}", f"{row.round_trip_px:.2f}"]
        cells += [
            f"{row.errors[key].yaw_error_rad:+.3f} / {row.errors[key].pitch_error_rad:+.3f}"
            + ("" if row.errors[key].estimator == key else f" ({row.errors[key].estimator})")
            for key in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| estimator | mean abs Δyaw | max abs Δyaw | mean abs Δpitch | max abs Δpitch |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        summary = summarize(rows, key)
        lines.append(f"| {key} | " + " | ".join(f"{value:.3f}" for value in summary) + " |")
    trips = [row.round_trip_px for row in rows]
    mean_trip = sum(trips) / len(trips) if trips else math.nan
    lines += ["", f"crop round trip: mean {mean_trip:.2f} px, max {max(trips, default=math.nan):.2f} px"]
    return "\n".join(lines)
