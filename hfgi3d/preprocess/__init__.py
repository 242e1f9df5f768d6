"""Photos → EG3D inputs: aligned face crops and their cameras (``python -m hfgi3d preprocess IN --output_dir OUT``).

Per photo: read it upright as 8-bit RGB (:func:`~hfgi3d.preprocess.photos.load_photo`), find faces
with MTCNN (:func:`~hfgi3d.preprocess.choice.detect_in_photo`), pick one
(:func:`~hfgi3d.preprocess.choice.select_face`), cut the EG3D-aligned crop and estimate its camera
(:func:`~hfgi3d.preprocess.crop.align_face`), then write ``OUT/<stem>.png`` and its label in
``OUT/dataset.json`` (EG3D's ``{"labels": [[name, c25], ...]}``, read by
:func:`hfgi3d.data.inputs.load_camera`). :func:`preprocess` runs a photo or a folder, never stops on
a bad photo, and writes ``OUT/preprocess_report.json`` listing what was processed and what was
skipped, and why (:mod:`~hfgi3d.preprocess.report`), and ``OUT/pose_check.png``: every crop of the
run with its landmarks and estimated head pose drawn on it, to spot a bad camera at a glance
(:mod:`~hfgi3d.preprocess.check`).

Each stage has its module, with its conventions and policies in the module docstring:

* :mod:`~hfgi3d.preprocess.photos` — decoding awkward files (modes, bit depths, EXIF, animations);
* :mod:`~hfgi3d.preprocess.choice` — detection and which face counts;
* :mod:`~hfgi3d.preprocess.crop` — EG3D's crop geometry (pixel coordinates, the template, roll),
  the camera, and the resampling with FFHQ's border padding;
* :mod:`~hfgi3d.preprocess.report` — options, per-photo outcomes, ``dataset.json`` and the summary.
* :mod:`~hfgi3d.preprocess.check` — the pose-check pictures.
* :mod:`~hfgi3d.preprocess.accuracy` — crop round trip and pose errors against EG3D's own cameras.

Policies (the run):
    * Existing crops in OUT are kept unless ``overwrite`` (checked per photo, before any work);
      ``dataset.json`` is merged (labels of photos not processed in this run are kept) and
      ``preprocess_report.json`` describes the last run. Every file is written to a temporary
      name and renamed (:mod:`hfgi3d.io`), so an interrupted run never leaves a half-written file.
    * Two inputs with the same stem, or a crop that would replace its own photo, are per-photo
      errors (``name_clash``); an unexpected exception on one photo is reported as
      ``internal_error`` and the batch goes on.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from facenet_pytorch import MTCNN
from PIL import Image
from tqdm import tqdm

from hfgi3d.cameras import yaw_pitch_of
from hfgi3d.faces import make_detector
from hfgi3d.io import IMAGE_SUFFIXES, list_inputs, write_bytes_atomic
from hfgi3d.pose import PoseEstimator
from hfgi3d.pose.mediapipe import default_pose_estimator
from hfgi3d.preprocess.check import check_page_name, contact_sheets, pose_tile
from hfgi3d.preprocess.choice import FaceChoice, detect_in_photo, select_face
from hfgi3d.preprocess.crop import (
    DEFAULT_SIZE,
    AlignedFace,
    Crop,
    CropTransform,
    align_face,
    crop_transform,
    eg3d_crop_matrix,
    eg3d_landmarks,
    ffhq_roll_rad,
    pos_fit,
    transform_points,
    warp_photo,
)
from hfgi3d.preprocess.photos import MIN_PHOTO_SIDE_PX, Photo, load_photo
from hfgi3d.preprocess.report import (
    DATASET_JSON,
    REPORT_JSON,
    PreprocessError,
    PreprocessOptions,
    PreprocessReport,
    ProcessedImage,
    SkipCode,
    SkippedImage,
    format_summary,
    quality_warnings,
    read_labels,
    read_report,
    write_labels,
    write_report,
)

__all__ = [
    "DATASET_JSON",
    "DEFAULT_SIZE",
    "REPORT_JSON",
    "AlignedFace",
    "Crop",
    "CropTransform",
    "FaceChoice",
    "Photo",
    "PreprocessError",
    "PreprocessOptions",
    "PreprocessReport",
    "ProcessedImage",
    "SkipCode",
    "SkippedImage",
    "align_face",
    "crop_transform",
    "detect_in_photo",
    "eg3d_crop_matrix",
    "eg3d_landmarks",
    "ffhq_roll_rad",
    "format_summary",
    "list_inputs",
    "load_photo",
    "pos_fit",
    "preprocess",
    "select_face",
    "transform_points",
    "warp_photo",
]


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
        output_dir: receives ``<stem>.png`` crops, ``dataset.json``, ``preprocess_report.json`` and the
            pose-check sheets of the photos this run processed (``pose_check.png``, …).
        options: crop size, face choice and overwrite policy (defaults: :class:`PreprocessOptions`).
        estimator: pose from the crop (default: :func:`hfgi3d.pose.mediapipe.default_pose_estimator`, MediaPipe's
            landmarks where mediapipe is installed, else MTCNN's five points and a note in the report).
        detector: from :func:`hfgi3d.faces.make_detector` (built on the CPU when needed and not given).
        progress: show a tqdm progress bar.

    Returns:
        What was processed and skipped (also written to ``preprocess_report.json``).

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        InputError: ``input_path`` is a folder without files.
        ValueError: ``output_dir`` is a file or the input folder itself, or holds an invalid ``dataset.json``.
    """
    options = PreprocessOptions() if options is None else options
    input_path, output_dir = Path(input_path), Path(output_dir)
    inputs = list_inputs(input_path)
    _check_output_dir(input_path, output_dir)
    labels = read_labels(output_dir / DATASET_JSON)
    read_report(output_dir / REPORT_JSON)  # a stale file is refused now, not after the run
    output_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    from_folder = input_path.is_dir()
    processed: list[ProcessedImage] = []
    skipped: list[SkippedImage] = []
    claimed: dict[str, Path] = {}
    tiles = []
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
                if estimator is None:
                    estimator, missing = default_pose_estimator()
                    notes += [missing] if missing else []
                entry, face = _process_photo(path, output_dir / name, detector, estimator, options)
                c25 = face.pose.c25
                angles = f"yaw {entry.yaw_rad:+.2f}  pitch {entry.pitch_rad:+.2f}"
                caption = f"{path.stem[:36]}\n{angles}  {entry.pose_estimator}"
                tiles.append(pose_tile(face.pixels, face.landmarks_px, c25, caption, warned=bool(entry.warnings)))
                processed.append(entry)
                labels[name] = [float(v) for v in c25[0].tolist()]
            except PreprocessError as error:
                skipped.append(SkippedImage(str(path), error.code, str(error), error.notes))
            except Exception as error:  # a bug must not cost the rest of a long batch; the report names it
                message = f"unexpected {type(error).__name__} on {path.name}: {error} (please report this)"
                skipped.append(SkippedImage(str(path), "internal_error", message))
    finally:
        report = PreprocessReport(
            str(input_path), str(output_dir), options, tuple(processed), tuple(skipped), tuple(notes)
        )
        write_labels(output_dir / DATASET_JSON, labels)
        write_report(output_dir / REPORT_JSON, report)
        for page, sheet in enumerate(contact_sheets(tiles)):
            _write_png(output_dir / check_page_name(page), np.asarray(sheet))
    return report


def _process_photo(
    path: Path, output_path: Path, detector: MTCNN, estimator: PoseEstimator, options: PreprocessOptions
) -> tuple[ProcessedImage, AlignedFace]:
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
    yaw, pitch = (float(angle[0]) for angle in yaw_pitch_of(face.pose.c25[:, :16].reshape(-1, 4, 4)))
    _write_png(output_path, face.pixels)
    entry = ProcessedImage(
        input=str(path),
        output=output_path.name,
        face_index=options.face_index,
        num_faces=choice.num_faces,
        face_score=float(detections.scores[choice.detection]),
        yaw_rad=yaw,
        pitch_rad=pitch,
        pose_estimator=face.pose.estimator,
        pose_confidence=face.pose.confidence,
        reprojection_px=face.pose.reprojection_px,
        magnification=face.magnification,
        padded_fraction=face.padded_fraction,
        notes=photo.notes,
        warnings=(*choice.warnings, *quality_warnings(face, yaw, pitch, options.size)),
    )
    return entry, face


def _check_output_dir(input_path: Path, output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {output_dir} is a file: pass a folder (it is created if missing)")
    if input_path.is_dir() and output_dir.resolve() == input_path.resolve():
        raise ValueError(
            f"output folder {output_dir} is the input folder: pass another one, crops would replace photos"
        )


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
