"""What a preprocessing run chose and did: options, per-photo outcomes, ``dataset.json`` and the summary.

:class:`PreprocessOptions` holds what the user picks on the command line; a run's
:class:`PreprocessReport` lists each photo as a :class:`ProcessedImage` (with its pose and quality
figures) or a :class:`SkippedImage` (with a :data:`SkipCode` and the message of the
:class:`PreprocessError` that stopped it) and is written as ``preprocess_report.json``. The crops'
cameras go to EG3D's ``dataset.json`` (``{"labels": [[name, c25], ...]}``, read by
:func:`hfgi3d.data.inputs.load_camera`), merged with the labels an earlier run left there. Files are
written atomically (:mod:`hfgi3d.io`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from hfgi3d.io import write_json_atomic
from hfgi3d.preprocess.crop import DEFAULT_SIZE, AlignedFace

DATASET_JSON = "dataset.json"
REPORT_JSON = "preprocess_report.json"
MIN_SIZE = 64
"""Smallest crop side accepted (pixels)."""
DEFAULT_MIN_FACE_PX = 64
"""Faces whose MTCNN box is smaller (shorter side, photo pixels) are ignored: the 512² crop would enlarge
them ~8× and EG3D would invert blur. Lower it with ``--min_face_px`` for small faces."""
WARN_MAGNIFICATION = 2.0
"""The report warns when the crop enlarges the photo more than this (a blurry input)."""
WARN_PADDED_FRACTION = 0.2
"""The report warns when more than this fraction of the crop lies outside the photo."""
WARN_YAW_RAD = 0.8
WARN_PITCH_RAD = 0.5
WARN_REPROJECTION = 0.025
"""× size: the report warns that the pose is uncertain when the landmarks miss the posed 3D face by more (RMS
after the framing fit; 12.8 px at 512²). On EG3D's own crops (``tests/data/eg3d_cameras``) MediaPipe's
landmarks miss its mean face by 3–8 px, MTCNN's five miss the five-point one by 0.3–3 px; beyond are
grimaces, occlusions, unusual faces and false detections."""
WARN_CONFIDENCE = 0.25
"""The report also warns when fewer than this share of the landmarks lie within 1 % of the crop side of the
posed face (:attr:`hfgi3d.pose.PoseEstimate.confidence`; 0.36–0.94 on the crops above for MediaPipe)."""
_JSON_INDENT = 1

SkipCode = Literal[
    "not_an_image",  # PIL cannot identify the file, or a folder entry without an image extension
    "unreadable",  # corrupt or truncated image data
    "too_small",  # photo smaller than MIN_PHOTO_SIDE_PX
    "no_face",  # no detection above MIN_FACE_SCORE
    "face_too_small",  # faces found, all below min_face_px
    "several_faces",  # more than one face with --single_face
    "face_index",  # --face_index beyond the faces found
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
    """What ``python -m hfgi3d preprocess`` lets the user choose.

    ``face_index``, ``single_face`` and ``min_face_px``: :mod:`hfgi3d.preprocess.choice`; ``size``:
    :mod:`hfgi3d.preprocess.crop`; ``overwrite``: :mod:`hfgi3d.preprocess`.
    """

    size: int = DEFAULT_SIZE
    face_index: int = 0
    single_face: bool = False
    overwrite: bool = False
    min_face_px: int = DEFAULT_MIN_FACE_PX

    def __post_init__(self) -> None:
        if self.size < MIN_SIZE:
            raise ValueError(f"--size must be at least {MIN_SIZE} px, got {self.size}")
        if self.face_index < 0:
            raise ValueError(f"--face_index counts from 0 (the most confident face), got {self.face_index}")
        if self.min_face_px < 1:
            raise ValueError(f"--min_face_px must be positive, got {self.min_face_px}")


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
    pose_estimator: str
    """Which estimator gave the camera (``"mediapipe"``, or ``"pnp5"``: five MTCNN points)."""
    pose_confidence: float
    """Share of the estimator's landmarks that its posed 3D face explains (:class:`hfgi3d.pose.PoseEstimate`)."""
    reprojection_px: float
    """RMS distance between the estimator's landmarks and its posed 3D face, crop pixels."""
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
    """What :func:`hfgi3d.preprocess.preprocess` did; :meth:`to_json` is ``preprocess_report.json``."""

    input: str
    output_dir: str
    options: PreprocessOptions
    processed: tuple[ProcessedImage, ...] = ()
    skipped: tuple[SkippedImage, ...] = ()
    notes: tuple[str, ...] = ()
    """About the whole run (e.g. which pose estimator was missing)."""

    def to_json(self) -> dict[str, object]:
        return {
            "input": self.input,
            "output_dir": self.output_dir,
            "options": asdict(self.options),
            "notes": list(self.notes),
            "num_processed": len(self.processed),
            "num_skipped": len(self.skipped),
            "processed": [asdict(entry) for entry in self.processed],
            "skipped": [asdict(entry) for entry in self.skipped],
        }


def read_labels(path: Path) -> dict[str, list[float]]:
    """Labels of an existing ``dataset.json``, keyed by file name (``{}`` if there is none)."""
    if not path.exists():
        return {}
    try:
        content = json.loads(path.read_text())
        return {str(name): list(label) for name, label in content["labels"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} exists but is not an EG3D dataset.json ({error}): move it away or pick another output folder"
        ) from error


def write_labels(path: Path, labels: dict[str, list[float]]) -> None:
    """Write EG3D's ``dataset.json``, labels sorted by file name."""
    write_json_atomic(path, {"labels": [[name, labels[name]] for name in sorted(labels)]}, indent=_JSON_INDENT)


def write_report(path: Path, report: PreprocessReport) -> None:
    """Write ``preprocess_report.json``, keeping what earlier runs into the folder reported.

    The file holds one entry per photo, its latest outcome: a photo this run processed or skipped
    replaces its earlier entry, except that a crop which already exists (skipped as ``exists``)
    keeps the entry of the run that made it. ``input``/``options`` describe this run; ``runs``
    counts the runs.
    """
    content = report.to_json()
    previous = read_report(path)
    runs = 1
    if previous is not None:
        keep_processed = {entry.input for entry in report.skipped if entry.code == "exists"}
        attempted = {entry.input for entry in report.processed} | {entry.input for entry in report.skipped}
        redone = attempted - keep_processed
        processed = [e for e in previous["processed"] if e["input"] not in redone]
        processed += [asdict(entry) for entry in report.processed]
        done = {entry["input"] for entry in processed}
        skipped = [e for e in previous["skipped"] if e["input"] not in redone | keep_processed]
        skipped += [asdict(entry) for entry in report.skipped if entry.input not in done]
        content.update(processed=processed, skipped=skipped, num_processed=len(processed), num_skipped=len(skipped))
        runs = int(previous.get("runs", 1)) + 1
    content["runs"] = runs
    write_json_atomic(path, content, indent=_JSON_INDENT)


def read_report(path: Path) -> dict[str, Any] | None:
    """An existing ``preprocess_report.json`` (``None`` if there is none)."""
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text())
        if not isinstance(content["processed"], list) or not isinstance(content["skipped"], list):
            raise TypeError("processed/skipped are not lists")
        return dict(content)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} exists but is not a preprocess report ({error}): move it away or pick another output folder"
        ) from error


def quality_warnings(face: AlignedFace, yaw: float, pitch: float, size: int) -> list[str]:
    """What the report should warn about a crop and its pose (thresholds: the ``WARN_*`` constants)."""
    warnings = []
    if face.magnification > WARN_MAGNIFICATION:
        warnings.append(f"the crop enlarges the photo {face.magnification:.1f}×: expect a blurry input")
    if face.padded_fraction > WARN_PADDED_FRACTION:
        warnings.append(
            f"{face.padded_fraction:.0%} of the crop lies outside the photo (filled by reflection and blur)"
        )
    if abs(yaw) > WARN_YAW_RAD or abs(pitch) > WARN_PITCH_RAD:
        warnings.append(
            f"extreme pose (yaw {yaw:+.2f}, pitch {pitch:+.2f} rad): landmarks are unreliable here; "
            "pass the camera yourself if you know it"
        )
    pose = face.pose
    if pose.reprojection_px > WARN_REPROJECTION * size or pose.confidence < WARN_CONFIDENCE:
        warnings.append(
            f"the pose is uncertain: {pose.estimator}'s landmarks miss the posed 3D face by {pose.reprojection_px:.1f} "
            f"px RMS ({pose.confidence:.0%} within 1 % of the crop) — unusual face or expression, occlusion or a "
            "false detection; check the crop, or pass the camera yourself"
        )
    return warnings


def format_summary(report: PreprocessReport) -> str:
    """A human-readable account of a run: counts, then every skipped photo with its reason, notes, warnings."""
    total = len(report.processed) + len(report.skipped)
    lines = [
        f"preprocess: {len(report.processed)} of {total} photo(s) aligned into {report.output_dir} "
        f"({DATASET_JSON}, {REPORT_JSON})",
        *(f"note: {note}" for note in report.notes),
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
