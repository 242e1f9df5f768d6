"""EG3D's own camera labelling: Deep3DFaceRecon's pose network and EG3D's conversion to a 25-vector.

EG3D labels every training photo (FFHQ, and in-the-wild photos through
``dataset_preprocessing/ffhq/preprocess_in_the_wild.py``) with the head pose Deep3DFaceRecon_pytorch
regresses from it, converted by ``3dface2idr_mat.py`` and ``preprocess_face_cameras.py``. The
estimators of :mod:`hfgi3d.pose` and :mod:`hfgi3d.pose.mediapipe` fit a mean face to landmarks,
so each face's own shape (a long nose, a child's proportions) shifts their pitch by ~0.07 rad
against EG3D's labels (``benchmarks/README.md``). :class:`Deep3DPoseEstimator` runs the network
EG3D ran, so its cameras are EG3D's labels, up to the crop's resampling. It needs
Deep3DFaceRecon's released checkpoint, which cannot be downloaded here (``--pose_estimator deep3d
--deep3d_checkpoint PATH``).

Convention (Deep3DFaceRecon_pytorch, the commit EG3D pins):
    * network: a torchvision-layout ResNet-50 without ``fc`` (``backbone.*``), then seven 1×1
      convolutions on the pooled 2048 features (``final_layers.0``–``6``: 80 identity, 64
      expression, 80 texture, 3 angle, 27 lighting, 2 + 1 translation), concatenated to 257
      coefficients. The checkpoint ``epoch_20.pth`` is a dict whose ``net_recon`` entry is that
      state dict (other entries, optimizer states, are ignored).
    * input: the photo aligned by ``align_img`` with ``target_size`` 224 and ``rescale_factor``
      102 (:func:`hfgi3d.preprocess.crop.eg3d_crop_matrix` with those values), RGB in ``[0, 1]``,
      BatchNorm in eval mode.
    * pose: angles ``(α, β, γ)`` (radians) and translation ``t`` (decimetres). The model's points
      ``X`` go to ``M·X + t`` with ``M = Rz(γ)·Ry(β)·Rx(α)``; the camera sits at ``(0, 0, 10)``
      looking down ``−z``, y up.
    * EG3D's conversion (:func:`camera_from_coefficients`): ``R = Mᵀ``, camera centre
      ``c = −R·(t − (0, 0, 10))``, scaled by 0.27 and shifted by ``(0, 0.006, 0.161)``, then
      rescaled to radius 2.7 about the origin; cam2world ``[[R·diag(1, −1, −1), c], [0, 1]]``;
      intrinsics ``2985.29 / 700 = 4.2647`` with the principal point at the centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from hfgi3d.cameras import FFHQ_FOCAL, FFHQ_RADIUS, intrinsics_from_focal, make_c25
from hfgi3d.faces import NUM_LANDMARKS
from hfgi3d.pose import (
    BFM_DM_TO_EG3D,
    DEEP3D_CAMERA_DISTANCE_DM,
    EG3D_LABEL_CAMERA_SHIFT,
    PoseEstimate,
    canonical_landmarks_px,
    misfit_summary,
    similarity_misfit,
)

COEFFICIENT_SIZES = (80, 64, 80, 3, 27, 2, 1)
"""Outputs of the seven final layers: identity, expression, texture, angles, lighting, translation x y, z."""
ANGLE_SLICE = slice(224, 227)
TRANSLATION_SLICE = slice(254, 257)
INPUT_SIZE = 224
"""``align_img``'s ``target_size`` in Deep3DFaceRecon's test pipeline, pixels."""
RESCALE_FACTOR = 102.0
"""``align_img``'s ``rescale_factor`` there: pixels per decimetre of the mean face."""
STATE_KEY = "net_recon"
CHECKPOINT_HELP = (
    "Deep3DFaceRecon_pytorch's released model (checkpoints/<name>/epoch_20.pth, linked from the README "
    "of sicxu/Deep3DFaceRecon_pytorch; EG3D's preprocessing uses it as checkpoints/pretrained/epoch_20.pth)"
)
_FLIP_YZ = (1.0, -1.0, -1.0)  # Deep3DFaceRecon's camera looks down −z with y up; EG3D's (OpenCV) down +z, y down


class Deep3DCheckpointError(ValueError):
    """A file that is not Deep3DFaceRecon's checkpoint; the message names the file and what is wrong."""


class ReconNet(nn.Module):
    """Deep3DFaceRecon's ``ReconNetWrapper`` for inference: photo (``N×3×224×224``, ``[0, 1]``) → ``N×257``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.Identity()  # use_last_fc=False: no fc in the state dict
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, size, kernel_size=1) for size in COEFFICIENT_SIZES)

    def forward(self, image: Tensor) -> Tensor:
        features = self.backbone(image)[:, :, None, None]  # N×2048×1×1, after the average pool
        return torch.cat([layer(features) for layer in self.final_layers], dim=1).flatten(1)


def load_recon_net(path: str | Path) -> ReconNet:
    """The network of a Deep3DFaceRecon checkpoint, in eval mode; never runs code from the file.

    Raises:
        FileNotFoundError: no such file (the message says where to get it).
        Deep3DCheckpointError: the file is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass {CHECKPOINT_HELP}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file gets the same one-line answer
        message = f"{path} is not a readable torch checkpoint ({error}); expected {CHECKPOINT_HELP}"
        raise Deep3DCheckpointError(message) from error
    if not isinstance(payload, dict) or STATE_KEY not in payload:
        raise Deep3DCheckpointError(f"{path} has no {STATE_KEY!r} entry: expected {CHECKPOINT_HELP}")
    state = {key.removeprefix("module."): value for key, value in payload[STATE_KEY].items()}
    net = ReconNet()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join([*(f"missing {k}" for k in missing[:3]), *(f"unexpected {k}" for k in unexpected[:3])])
        raise Deep3DCheckpointError(f"{path}: {STATE_KEY} is not Deep3DFaceRecon's network ({shown})")
    return net.eval().requires_grad_(False)


def _rotation(angles: Tensor) -> Tensor:
    """``N×3×3`` ``M = Rz(γ)·Ry(β)·Rx(α)`` of ``N×3`` angles ``(α, β, γ)``."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    rx = matrix([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    ry = matrix([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rz = matrix([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def camera_from_coefficients(angles: Tensor, translation: Tensor) -> Tensor:
    """EG3D's ``N×25`` labels (float64) of Deep3DFaceRecon's ``N×3`` angles and ``N×3`` translations
    (module docstring: ``3dface2idr_mat.py``, then ``preprocess_face_cameras.py --mode orig``)."""
    angles, translation = angles.to(torch.float64), translation.to(torch.float64)
    rotation = _rotation(angles).transpose(1, 2)  # N×3×3: Deep3DFaceRecon's compute_rotation
    distance = torch.tensor((0.0, 0.0, DEEP3D_CAMERA_DISTANCE_DM), dtype=torch.float64)
    centre = -(rotation @ (translation - distance)[..., None])[..., 0]  # N×3, decimetres
    centre = BFM_DM_TO_EG3D * centre + torch.tensor(EG3D_LABEL_CAMERA_SHIFT, dtype=torch.float64)
    centre = FFHQ_RADIUS * centre / torch.linalg.vector_norm(centre, dim=-1, keepdim=True)
    cam2world = torch.eye(4, dtype=torch.float64).repeat(len(angles), 1, 1)
    cam2world[:, :3, :3] = rotation * torch.tensor(_FLIP_YZ, dtype=torch.float64)  # R·diag(1, −1, −1)
    cam2world[:, :3, 3] = centre
    intrinsics = intrinsics_from_focal(FFHQ_FOCAL).to(torch.float64).expand(len(angles), 3, 3)
    return make_c25(cam2world, intrinsics)


class Deep3DPoseEstimator:
    """:class:`hfgi3d.pose.PoseEstimator` running Deep3DFaceRecon on the crop (module docstring).

    The camera is EG3D's label formula applied to the network's pose (it keeps the small roll
    a levelled face may still have). ``confidence`` and ``reprojection_px`` say how well the Basel
    mean face's five points, seen by that camera and framed by a 2D similarity, explain the five
    landmarks, as for the five-point estimator (the network gives no landmarks of its own without
    the Basel Face Model).
    """

    name = "deep3d"

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = load_recon_net(checkpoint).to(self.device)

    @torch.no_grad()
    def coefficients(self, crop: np.ndarray, landmarks_px: Tensor) -> Tensor:
        """Deep3DFaceRecon's ``1×257`` coefficients of an ``S×S×3`` uint8 crop with its ``5×2`` landmarks."""
        from hfgi3d.preprocess.crop import eg3d_crop_matrix, warp_photo

        points = landmarks_px.to(torch.float64)[None]
        matrix = eg3d_crop_matrix(
            points, INPUT_SIZE, torch.zeros(1, dtype=torch.float64),
            target_size=INPUT_SIZE, rescale_factor=RESCALE_FACTOR, centre_crop_size=INPUT_SIZE,
        )  # fmt: skip
        aligned = warp_photo(crop, matrix[0].float(), INPUT_SIZE).pixels
        image = torch.from_numpy(aligned).permute(2, 0, 1)[None].float().div(255.0).to(self.device)
        return self.net(image).cpu().to(torch.float64)

    def estimate(self, crop: np.ndarray, landmarks_px: Tensor) -> PoseEstimate:
        coefficients = self.coefficients(crop, landmarks_px)
        c25 = camera_from_coefficients(coefficients[:, ANGLE_SLICE], coefficients[:, TRANSLATION_SLICE])
        observed = landmarks_px.to(torch.float64)[None]
        residuals = similarity_misfit(observed, canonical_landmarks_px(c25, crop.shape[0]))
        rms, inliers = misfit_summary(residuals, NUM_LANDMARKS, crop.shape[0])
        return PoseEstimate(c25.float(), self.name, float(inliers[0]), float(rms[0]))
