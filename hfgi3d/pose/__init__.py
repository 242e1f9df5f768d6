"""Head pose from five face landmarks, as EG3D cameras: a canonical 3D face fitted by reprojection.

The pose is a camera on EG3D's orbit (radius 2.7 around the world origin, looking at the pivot
``[0, 0, 0.2]``, fixed FFHQ intrinsics; see :mod:`hfgi3d.cameras`), so only its yaw and pitch are
unknown. :class:`PnPPoseEstimator` finds them by fitting the projections of five canonical 3D
landmarks (:func:`canonical_landmarks_world`) to the five detected ones; :func:`fit_orbit_pose` is
the fit itself, for any number of points (:mod:`hfgi3d.pose.mediapipe` fits MediaPipe's landmarks
with it). Any estimator with the :class:`PoseEstimator` method ``estimate(crop, landmarks)`` →
:class:`PoseEstimate` (camera, estimator name, confidence, reprojection error) can be passed to
:mod:`hfgi3d.preprocess`.

Convention:
    Landmarks are ``N×5×2`` points ``(x, y)`` in pixels of a square crop of side ``image_size``,
    pixel ``(col, row)`` centred at ``(col, row)`` (:mod:`hfgi3d.faces`), in the order of
    :data:`hfgi3d.faces.LANDMARK_NAMES` (viewer's left eye first). A camera's normalized image
    point ``(u, v)`` is at pixel ``(u·S − 0.5, v·S − 0.5)``, matching :func:`hfgi3d.cameras.pixel_rays`.
    The canonical face lives in EG3D's world: y up, the face looks towards ``+z`` (the frontal
    camera ``orbit_cam2world(0, 0)`` sits at ``[0, 0, 2.7]`` and looks along ``-z``), the viewer's
    left eye at ``x < 0`` (camera right is world ``+x`` for the frontal camera).

Accuracy (measured; ``tests/test_pose.py`` checks the synthetic figures):
    * Noise-free projections of the canonical landmarks: exact (< 1e-6 rad), whatever the crop's
      scale, roll and shift.
    * Landmark noise of σ px per coordinate on a 512² crop (eye-to-mouth ≈ 150 px), |yaw| ≤ 0.5,
      |pitch| ≤ 0.3 rad: RMS error ≈ 0.012·σ rad in yaw and ≈ 0.020·σ rad in pitch, unbiased.
      MTCNN's landmarks are off by roughly 2–5 px at that scale, i.e. ~0.03–0.06 rad of yaw and
      ~0.04–0.1 rad of pitch. Pitch is the weak axis: it rests on the nose tip's height between
      eyes and mouth, and the mouth moves with expression.
    * Calibration: insightface's ArcFace template (a mean of frontal five-point faces) reads as
      yaw +0.011, pitch −0.053 rad — MTCNN-style noses sit a little lower than the BFM nose tip,
      which the fit takes for a camera slightly above. Bias of this size remains for any face
      that is not the mean face (nose length, eye spacing, mouth width vary by ~10 %).
    * Photos (MTCNN landmarks, through :mod:`hfgi3d.preprocess`): the astronaut
      (``skimage.data.astronaut``) reads as yaw +0.003 / pitch −0.19, its mirror +0.018 / −0.16 and
      a copy rolled by 15° −0.024 / −0.13: frontal, with a camera a little above her lowered,
      smiling face; the spread (±0.03) is MTCNN's jitter. The cameraman (``skimage.data.camera``,
      looking to the viewer's right) reads as yaw −0.75, his mirror +0.67.
    * Against EG3D's own cameras (Deep3DFaceRecon fits) on five real EG3D crops
      (``tests/data/eg3d_cameras``, ``benchmarks/pose_accuracy.py``): mean |Δyaw| 0.059, max 0.165;
      mean |Δpitch| 0.109, max 0.369 rad (a small child, whose proportions are far from the mean
      face's). MediaPipe's landmarks do better (:mod:`hfgi3d.pose.mediapipe`).
    * Beyond ``|yaw| ≈ 0.8`` rad the far eye is partly hidden, MTCNN's landmarks degrade, and five
      points say little. EG3D's own labels come from a 3DMM fit (Deep3DFaceRecon: dense
      photometric fit with identity and expression) and are more accurate; pass such a camera
      (``--data.camera``) when you have one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from hfgi3d.cameras import FFHQ_FOCAL, FFHQ_PIVOT, FFHQ_RADIUS, orbit_c25, split_c25
from hfgi3d.faces import LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, NUM_LANDMARKS, RIGHT_EYE

LANDMARKS_BFM_DM: tuple[tuple[float, float, float], ...] = (
    (-0.31148657, 0.29036078, 0.13377953),  # left eye (viewer's left), centre of its two corners
    (0.30979887, 0.28972036, 0.13179526),  # right eye
    (0.0032535, -0.04617932, 0.55244243),  # nose tip
    (-0.25216928, -0.38133916, 0.22405732),  # left mouth corner
    (0.2484662, -0.38128236, 0.22235769),  # right mouth corner
)
"""Mean-face five landmarks of the Basel Face Model in decimetres (x to the viewer's right, y up, z out
of the face), as Deep3DFaceRecon_pytorch's ``load_lm3d`` derives them from ``BFM/similarity_Lm3D_all.mat``.
EG3D's FFHQ preprocessing (``dataset_preprocessing/ffhq/crop_images*.py``) aligns every photo to these
points (``align_img`` with ``lm3d_std``), so they define both its crop and, through Deep3DFaceRecon, its
camera labels."""

BFM_DM_TO_EG3D = 0.27
"""World units per decimetre: EG3D's ``3dface2idr_mat.py`` scales Deep3DFaceRecon's camera (10 dm from
the face) by 0.27 to put it at radius 2.7."""
EG3D_LABEL_CAMERA_SHIFT = (0.0, 0.006, 0.161)
"""World offset EG3D's ``3dface2idr_mat.py`` adds to every camera centre ("additional offset used in
submission") before ``preprocess_face_cameras.py`` rescales the centre back to radius 2.7."""
DEEP3D_CAMERA_DISTANCE_DM = 10.0
"""Deep3DFaceRecon's camera sits this far (decimetres) in front of the face model."""

EXPRESSION_STD = 0.1
"""How far expressions move the mouth corners (a smile raises and widens them), as a fraction of the
eye-to-mouth distance: the prior of the fit's expression terms."""
LANDMARK_NOISE = 0.02
"""MTCNN's landmark error as a fraction of the eye-to-mouth distance (its ratio to :data:`EXPRESSION_STD`
weighs the expression prior against the landmarks)."""
# Mouth-corner displacements of the two expression terms, (x, y) per landmark in image axes (y down).
_MOUTH_RAISE = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, -1.0), (0.0, -1.0))
_MOUTH_WIDEN = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (-1.0, 0.0), (1.0, 0.0))
_NUM_SIMILARITY = 4  # a, b, tx, ty of x' = a·x − b·y + tx, y' = b·x + a·y + ty

DEFAULT_YAW_LIMIT_RAD = 1.2  # just short of profile: five points cannot tell more (and MTCNN fails earlier)
DEFAULT_PITCH_LIMIT_RAD = 0.8
_GRID_STEP_RAD = 0.2  # coarse search spacing; the refinement converges from within half a step
_REFINE_ITERATIONS = 12
_FD_STEP_RAD = 1e-3  # central differences; the projection is float32, so smaller steps only add noise
_INITIAL_DAMPING = 1e-3  # Levenberg–Marquardt, relative to the diagonal of JᵀJ
_DAMPING_DOWN, _DAMPING_UP = 0.3, 10.0
_EPS = 1e-12


def canonical_landmarks_world(dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``5×3`` canonical face landmarks in EG3D's world (world units), order of ``LANDMARK_NAMES``.

    Convention:
        EG3D's camera labels put Deep3DFaceRecon's camera ``c`` (decimetres, face model at the
        origin) at ``k·(0.27·c + d)`` with ``d`` = :data:`EG3D_LABEL_CAMERA_SHIFT` and ``k`` rescaling
        the result to radius 2.7. A camera moved that way sees the face model unchanged only if the
        model moves the same way, so the generator's face sits at ``k·(0.27·X + d)``; ``k`` is taken
        for the frontal camera (``c = [0, 0, 10]``): ``k = 2.7 / ‖[0, 0.006, 2.861]‖ = 0.9437``, i.e.
        ``X_world = 0.2548·X_dm + [0, 0.0057, 0.1519]``. Projected by the frontal camera into a
        512² crop the eyes land at ``y ≈ 186.4`` px and the mouth corners at ``y ≈ 335.7``, ~1 %
        larger and ~5 px higher than EG3D's own crop rule (an orthographic ``align_img`` fit, 300 px
        per dm at 1024², centre-cropped 700 → 512) puts them: the difference is that camera shift,
        which the generator learned and an orbit camera does not have.
    """
    return bfm_dm_to_world(torch.tensor(LANDMARKS_BFM_DM, dtype=torch.float64)).to(dtype)


def bfm_dm_to_world(points_dm: Tensor) -> Tensor:
    """``K×3`` points of the Basel Face Model's frame (decimetres) in EG3D's world, where the generator's face
    sits (:func:`canonical_landmarks_world` derives the map); float64."""
    label_camera = torch.tensor((0.0, 0.0, DEEP3D_CAMERA_DISTANCE_DM * BFM_DM_TO_EG3D), dtype=torch.float64)
    shift = torch.tensor(EG3D_LABEL_CAMERA_SHIFT, dtype=torch.float64)
    rescale = FFHQ_RADIUS / torch.linalg.vector_norm(label_camera + shift)
    return rescale * (BFM_DM_TO_EG3D * points_dm.to(torch.float64) + shift)


def pixel_positions(points_world: Tensor, c25: Tensor, image_size: int) -> Tensor:
    """Pixel positions of world points seen by EG3D cameras (the arguments in the order of
    :func:`hfgi3d.geometry.project_points`, which also returns depth and validity).

    Args:
        points_world: ``K×3`` or ``N×K×3`` points, world units, in front of the cameras.
        c25: ``N×25`` camera labels (OpenCV cam2world, normalized intrinsics).
        image_size: side ``S`` of the square image, pixels.

    Returns:
        ``N×K×2`` points ``(x, y)`` in pixels, pixel centres at integers (module docstring).
    """
    cam2world, intrinsics = split_c25(c25)  # N×4×4, N×3×3
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    points = points_world.to(c25).expand(len(c25), *points_world.shape[-2:])  # N×K×3
    points_cam = (points - origin[:, None]) @ rotation  # N×K×3, rows are Rᵀ(X − o)
    homogeneous = points_cam @ intrinsics.transpose(1, 2)  # N×K×3, (u·z, v·z, z)
    uv = homogeneous[..., :2] / homogeneous[..., 2:]  # N×K×2, normalized image coordinates
    return uv * image_size - 0.5


def canonical_landmarks_px(c25: Tensor, image_size: int) -> Tensor:
    """``N×5×2`` pixel positions of the canonical landmarks seen by cameras ``c25`` (``N×25``).

    With the frontal camera this is the alignment template of :mod:`hfgi3d.preprocess`: where a
    frontal average face lands in an aligned crop.
    """
    return pixel_positions(canonical_landmarks_world(c25.dtype), c25, image_size)


class PoseEstimate(NamedTuple):
    """What a :class:`PoseEstimator` says about one aligned crop."""

    c25: Tensor
    """``1×25`` float32 camera label: an orbit camera (:func:`hfgi3d.cameras.orbit_c25`), or EG3D's own label
    formula (``deep3d``, :mod:`hfgi3d.pose.deep3d`)."""
    estimator: str
    """Which estimator answered (``"mediapipe"``, ``"pnp5"``, ``"deep3d"``): a fallback names itself."""
    confidence: float
    """Share of the fitted landmarks that the posed 3D face explains within :data:`INLIER_FRACTION` of the
    crop side, in ``[0, 1]``."""
    reprojection_px: float
    """Root-mean-square distance between the landmarks and the posed 3D face (after the framing fit), crop px."""


class PoseEstimator(Protocol):
    """Head pose of one aligned, roll-free ``S×S`` crop: the crop's pixels and its five landmarks → a camera."""

    def estimate(self, crop: np.ndarray, landmarks_px: Tensor) -> PoseEstimate:
        """``crop``: ``S×S×3`` uint8 RGB; ``landmarks_px``: ``5×2`` MTCNN points in the crop (module docstring)."""
        ...


INLIER_FRACTION = 0.01
"""× crop side (5 px at 512²): a landmark within this of the posed 3D face counts towards the confidence."""


class PoseFit(NamedTuple):
    """Result of an orbit-camera fit (all ``N``-vectors, float32)."""

    yaw_rad: Tensor
    pitch_rad: Tensor
    rms_px: Tensor
    """Root-mean-square distance between the landmarks and the fitted projections, pixels."""
    inlier_share: Tensor
    """Share of the landmarks within :data:`INLIER_FRACTION` of the image side of their fitted projection."""


Residuals = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(observed M×K×2, yaw M, pitch M) → M×R`` residuals of a model posed by orbit cameras (float64)."""


def fit_orbit_pose(
    observed_px: Tensor, residuals: Residuals, yaw_limit_rad: float, pitch_limit_rad: float
) -> tuple[Tensor, Tensor]:
    """Yaw and pitch (``N`` each, float64) minimizing ``residuals`` for ``N`` faces: grid search, then LM.

    The grid (spacing :data:`_GRID_STEP_RAD`, within the limits) is shared by all faces and searched in one
    batch; Levenberg–Marquardt with central-difference Jacobians then refines each face's best grid point.
    """
    yaw, pitch = _grid_search(observed_px, residuals, yaw_limit_rad, pitch_limit_rad)
    return _refine(observed_px, residuals, yaw, pitch, yaw_limit_rad, pitch_limit_rad)


def similarity_misfit(
    observed: Tensor, model: Tensor, extra_columns: Sequence[Tensor] = (), extra_penalty: Tensor | None = None
) -> Tensor:
    """Residuals of ``N×K×2`` points after the least-squares 2D similarity (and extra linear terms) onto them.

    Args:
        observed: ``N×K×2`` landmarks, pixels.
        model: ``N×K×2`` projections of the 3D model, pixels.
        extra_columns: more linear unknowns, each ``N×K×2`` (the landmarks' change per unit).
        extra_penalty: ``N×E`` square roots of the Gaussian prior weights of the extra unknowns.

    Returns:
        ``N×(2K + 4 + E)``: the ``2K`` landmark residuals, then the prior terms (zero for the similarity).
    """
    mx, my = model[..., 0], model[..., 1]  # N×K each
    ones, zeros = torch.ones_like(mx), torch.zeros_like(mx)
    columns = [  # each N×K×2: the landmarks' change per unit of one linear unknown
        torch.stack([mx, my], dim=-1),
        torch.stack([-my, mx], dim=-1),
        torch.stack([ones, zeros], dim=-1),
        torch.stack([zeros, ones], dim=-1),
        *extra_columns,
    ]
    penalty = torch.zeros(len(model), _NUM_SIMILARITY, dtype=model.dtype)  # N×U, √(prior weight)
    if extra_penalty is not None:
        penalty = torch.cat([penalty, extra_penalty], dim=1)
    num_points = model.shape[1]
    design = torch.stack(columns, dim=-1).reshape(len(model), 2 * num_points, -1)  # N×2K×U
    target = observed.reshape(len(model), -1)  # N×2K
    normal = design.transpose(1, 2) @ design + torch.diag_embed(penalty.square() + _EPS)  # N×U×U, SPD
    # Cholesky: batched LU solves of many tiny systems are ~20× slower on a multi-threaded CPU.
    coefficients = torch.cholesky_solve(design.transpose(1, 2) @ target[..., None], torch.linalg.cholesky(normal))
    misfit = target - (design @ coefficients)[..., 0]  # N×2K
    return torch.cat([misfit, penalty * coefficients[..., 0]], dim=1)


def affine_misfit(observed: Tensor, model: Tensor) -> Tensor:
    """``N×2K`` residuals of ``N×K×2`` points after the least-squares 2D affine map of ``model`` onto ``observed``.

    An affine framing absorbs a face's proportions (width against height, shear) as well as the crop's scale,
    roll and shift, so that only the 3D parallax between the points sets the angles.
    """
    design = torch.cat([model, torch.ones_like(model[..., :1])], dim=-1)  # N×K×3: x' = a·x + b·y + c (and y')
    normal = design.transpose(1, 2) @ design + _EPS * torch.eye(3, dtype=model.dtype)  # N×3×3, SPD
    coefficients = torch.cholesky_solve(design.transpose(1, 2) @ observed, torch.linalg.cholesky(normal))  # N×3×2
    return (observed - design @ coefficients).reshape(len(model), -1)


def misfit_summary(residuals: Tensor, num_points: int, image_size: int) -> tuple[Tensor, Tensor]:
    """RMS distance (px) and inlier share of ``N×R`` residuals whose first ``2K`` entries are landmark misfits."""
    distance = residuals[:, : 2 * num_points].reshape(len(residuals), num_points, 2).norm(dim=-1)  # N×K
    rms = distance.square().mean(-1).sqrt()
    inliers = (distance <= INLIER_FRACTION * image_size).double().mean(-1)
    return rms, inliers


@dataclass(frozen=True)
class PnPPoseEstimator:
    """Yaw and pitch by fitting the canonical 3D landmarks through EG3D's camera (a 2-DoF PnP).

    For a candidate ``(yaw, pitch)`` the canonical landmarks are projected by the orbit camera
    and fitted to the detected ones by linear least squares over

    * a 2D similarity (scale, roll, shift): the crop's framing is a nuisance, so the estimate
      depends on the *shape* of the five points, not on how tightly the crop was cut;
    * two expression terms that move the mouth corners up and apart (a smile), with a Gaussian
      prior of :data:`EXPRESSION_STD` of the eye-to-mouth distance. Without them a smile, which
      shortens the eye-to-mouth distance, reads as a camera above the face: corners raised and
      spread by 15 % of that distance give pitch −0.15 rad rigid, −0.01 with them (the smiling
      astronaut photo, aligned by :mod:`hfgi3d.preprocess`: −0.54 rigid, −0.19 with them).

    The remaining misfit is minimized over ``(yaw, pitch)`` by :func:`fit_orbit_pose`, batched over faces.

    Attributes:
        yaw_limit_rad: search range ``[-limit, limit]`` of the yaw.
        pitch_limit_rad: search range of the pitch.
        expression_std: prior spread of the expression terms (fraction of the eye-to-mouth
            distance); ``None`` fits the rigid mean face.
        radius: orbit radius, world units.
        pivot: look-at point, world units.
        focal: normalized focal length of the returned cameras.
    """

    yaw_limit_rad: float = DEFAULT_YAW_LIMIT_RAD
    pitch_limit_rad: float = DEFAULT_PITCH_LIMIT_RAD
    expression_std: float | None = EXPRESSION_STD
    radius: float = FFHQ_RADIUS
    pivot: Sequence[float] = FFHQ_PIVOT
    focal: float = FFHQ_FOCAL

    name = "pnp5"

    def __call__(self, landmarks_px: Tensor, image_size: int) -> Tensor:
        """``N×25`` orbit cameras (float32) for ``N×5×2`` landmarks of an ``S×S`` crop."""
        pose = self.fit(landmarks_px, image_size)
        return orbit_c25(pose.yaw_rad, pose.pitch_rad, self.radius, self.pivot, self.focal)

    def estimate(self, crop: np.ndarray, landmarks_px: Tensor) -> PoseEstimate:
        """The :class:`PoseEstimator` call: only the landmarks are read (``crop`` gives the crop's side)."""
        pose = self.fit(landmarks_px[None], crop.shape[0])
        c25 = orbit_c25(pose.yaw_rad, pose.pitch_rad, self.radius, self.pivot, self.focal)
        return PoseEstimate(c25, self.name, float(pose.inlier_share[0]), float(pose.rms_px[0]))

    def fit(self, landmarks_px: Tensor, image_size: int) -> PoseFit:
        """Least-squares yaw and pitch (radians) of ``N×5×2`` landmarks in an ``S×S`` crop."""
        if landmarks_px.ndim != 3 or landmarks_px.shape[1:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"expected N×{NUM_LANDMARKS}×2 landmarks, got shape {tuple(landmarks_px.shape)}")
        if self.expression_std is not None and self.expression_std <= 0:
            raise ValueError(f"expression_std must be positive or None (rigid face), got {self.expression_std}")
        observed = landmarks_px.detach().to(torch.float64).cpu()  # N×5×2

        def residuals(points: Tensor, yaw: Tensor, pitch: Tensor) -> Tensor:
            return self._misfit(points, self._project(yaw, pitch, image_size))

        yaw, pitch = fit_orbit_pose(observed, residuals, self.yaw_limit_rad, self.pitch_limit_rad)
        rms, inliers = misfit_summary(residuals(observed, yaw, pitch), NUM_LANDMARKS, image_size)
        return PoseFit(yaw.float(), pitch.float(), rms.float(), inliers.float())

    def _project(self, yaw: Tensor, pitch: Tensor, image_size: int) -> Tensor:
        """``N×5×2`` canonical landmarks seen from ``N`` orbit poses, pixels (float64)."""
        c25 = orbit_c25(yaw, pitch, self.radius, self.pivot, self.focal).to(torch.float64)
        return canonical_landmarks_px(c25, image_size)

    def _misfit(self, observed: Tensor, model: Tensor) -> Tensor:
        """Similarity (and expression) fit of ``N×5×2`` projections onto ``N×5×2`` landmarks; ``N×R`` residuals."""
        if self.expression_std is None:
            return similarity_misfit(observed, model)
        size = _eye_to_mouth(observed)  # N, pixels: the expression terms are fractions of it
        bases = (_MOUTH_RAISE, _MOUTH_WIDEN)
        columns = [torch.tensor(basis, dtype=model.dtype) * size[:, None, None] for basis in bases]
        penalty = (LANDMARK_NOISE / self.expression_std) * size[:, None].expand(-1, len(columns))
        return similarity_misfit(observed, model, columns, penalty)


def _grid_search(
    observed: Tensor, residuals: Residuals, yaw_limit_rad: float, pitch_limit_rad: float
) -> tuple[Tensor, Tensor]:
    """Best ``(yaw, pitch)`` of a regular grid for each face (``N`` each, float64)."""
    grid_pitch, grid_yaw = torch.meshgrid(
        _symmetric_grid(pitch_limit_rad), _symmetric_grid(yaw_limit_rad), indexing="ij"
    )
    grid_yaw, grid_pitch = grid_yaw.reshape(-1), grid_pitch.reshape(-1)  # G each
    num_faces, num_poses = len(observed), len(grid_yaw)
    pairs = observed[:, None].expand(num_faces, num_poses, *observed.shape[1:]).reshape(-1, *observed.shape[1:])
    misfit = residuals(pairs, grid_yaw.repeat(num_faces), grid_pitch.repeat(num_faces))  # (N·G)×R
    best = misfit.square().sum(-1).reshape(num_faces, num_poses).argmin(dim=1)  # N
    return grid_yaw[best], grid_pitch[best]


def _refine(
    observed: Tensor, residuals: Residuals, yaw: Tensor, pitch: Tensor, yaw_limit_rad: float, pitch_limit_rad: float
) -> tuple[Tensor, Tensor]:
    """Levenberg–Marquardt on ``(yaw, pitch)`` from a starting point (``N`` each, float64)."""
    params = torch.stack([yaw, pitch], dim=1)  # N×2
    limits = torch.tensor([yaw_limit_rad, pitch_limit_rad], dtype=torch.float64)
    damping = torch.full((len(observed),), _INITIAL_DAMPING, dtype=torch.float64)  # N
    residual = residuals(observed, params[:, 0], params[:, 1])  # N×R
    cost = residual.square().sum(-1)  # N
    for _ in range(_REFINE_ITERATIONS):
        jacobian = _jacobian(observed, residuals, params)  # N×R×2
        normal = jacobian.transpose(1, 2) @ jacobian  # N×2×2
        gradient = (jacobian.transpose(1, 2) @ residual[..., None])[..., 0]  # N×2
        diagonal = torch.diag_embed(torch.diagonal(normal, dim1=1, dim2=2) * damping[:, None] + _EPS)
        step = torch.linalg.solve(normal + diagonal, gradient)  # N×2
        candidate = torch.maximum(torch.minimum(params - step, limits), -limits)
        new_residual = residuals(observed, candidate[:, 0], candidate[:, 1])
        new_cost = new_residual.square().sum(-1)
        better = new_cost < cost  # N
        params = torch.where(better[:, None], candidate, params)
        residual = torch.where(better[:, None], new_residual, residual)
        cost = torch.where(better, new_cost, cost)
        damping = torch.where(better, damping * _DAMPING_DOWN, damping * _DAMPING_UP)
    return params[:, 0], params[:, 1]


def _jacobian(observed: Tensor, residuals: Residuals, params: Tensor) -> Tensor:
    """``N×R×2`` derivatives of the residuals by central differences."""
    columns = []
    for axis in range(2):
        offset = torch.zeros_like(params)
        offset[:, axis] = _FD_STEP_RAD
        plus, minus = params + offset, params - offset
        forward = residuals(observed, plus[:, 0], plus[:, 1])
        backward = residuals(observed, minus[:, 0], minus[:, 1])
        columns.append((forward - backward) / (2 * _FD_STEP_RAD))
    # The solver takes steps along −(JᵀJ)⁻¹Jᵀr with J = ∂r/∂θ.
    return torch.stack(columns, dim=-1)


def _eye_to_mouth(landmarks_px: Tensor) -> Tensor:
    """``N`` distances from the eyes' midpoint to the mouth corners' midpoint (``N×5×2`` landmarks)."""
    eyes = (landmarks_px[:, LEFT_EYE] + landmarks_px[:, RIGHT_EYE]) / 2
    mouth = (landmarks_px[:, MOUTH_LEFT] + landmarks_px[:, MOUTH_RIGHT]) / 2
    return torch.linalg.vector_norm(mouth - eyes, dim=-1)


def _symmetric_grid(limit_rad: float) -> Tensor:
    """Points ``k·step`` within ``[-limit, limit]``, always including 0 (float64)."""
    half = math.floor(limit_rad / _GRID_STEP_RAD + 1e-9)
    return torch.arange(-half, half + 1, dtype=torch.float64) * _GRID_STEP_RAD
