"""The paper's evaluation of one inversion (docs/method.md §9) plus hfgi3d's model-free consistency.

:func:`load_networks` reads every network the evaluation can use once (and says which metrics
must be skipped, and why); :func:`evaluate` scores an inverted latent + generator against the
input photo. The Lightning callback :class:`hfgi3d.callbacks.Evaluation` and the benchmarks call
these two functions. :func:`evaluate` renders the views once and hands them to one function per
metric family (:data:`FAMILY_FUNCTIONS`: :func:`input_view_metrics`, :func:`identity_metric`,
:func:`ibrnet_metrics`, :func:`warp_metrics`, :func:`pose_metrics`), each returning its metrics and
the reasons for its skips. The keys, their families and the benchmark tables that show them are
listed once, in :mod:`hfgi3d.metrics.registry`.

Metrics (``metrics.json`` keys; ``None`` when skipped, with the reason under ``skipped``):

* input view: ``psnr`` (dB), ``ssim``, ``ms_ssim``, ``lpips_alex``, ``lpips_vgg``;
* identity: ``id_arcface`` (ArcFace cosine between the input and ``identity_views`` random
  novel views, yaw ±0.35 / pitch ±0.25 rad around the frontal camera), ``id_facenet`` (the same
  with FaceNet, optional);
* 3D consistency (paper): ``ibrnet_psnr``, ``ibrnet_ssim``, ``ibrnet_lpips`` (AlexNet) of the
  input view predicted by IBRNet from 5 renders (canonical + the 4 corners of yaw ±0.35, pitch
  ±0.25 rad);
* 3D consistency (model-free, hfgi3d): ``warp_psnr``, ``warp_lpips`` (AlexNet),
  ``warp_coverage``: the same 5 renders warped back into the input view with rendered depth
  (:mod:`hfgi3d.metrics.consistency`), averaged over views;
* ``pose_error``: L2 (radians) between the (yaw, pitch) of the camera that rendered each identity
  view and the pose :class:`hfgi3d.pose.PnPPoseEstimator` reads from the render's MTCNN landmarks
  (the preprocessing pipeline's estimator; 5 landmarks, so expect ~0.05 rad of noise).

Convention:
    Images ``B×3×H×W`` in ``[-1, 1]``, cameras ``c25`` (:mod:`hfgi3d.cameras`). Novel cameras
    share the input camera's intrinsics. LPIPS inputs are area-resized to ``lpips_resize``
    (EG3D/PTI practice) when set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hfgi3d.cameras import make_c25, orbit_cam2world, split_c25, yaw_pitch_of
from hfgi3d.faces import NoFaceError, detect_best_faces, make_detector
from hfgi3d.generator import RenderingConfig, TriPlaneGenerator
from hfgi3d.losses import LPIPS
from hfgi3d.metrics.arcface import facenet_similarity, identity_similarity, load_arcface, load_facenet
from hfgi3d.metrics.consistency import warp_consistency
from hfgi3d.metrics.fidelity import MS_SSIM_MIN_SIZE_PX, finite_mean, ms_ssim, psnr, ssim
from hfgi3d.metrics.ibrnet import IBRNet, load_ibrnet, render_ibrnet
from hfgi3d.metrics.registry import EVALUATED, families
from hfgi3d.pose import PnPPoseEstimator

METRIC_KEYS = EVALUATED
"""Every metric :func:`evaluate` reports, in table order (:mod:`hfgi3d.metrics.registry`)."""

POSE_OFF_REASON = "pose accuracy is off (evaluation.metrics.pose_accuracy: false)"


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and how: the ``evaluation.metrics.*`` config entries.

    The paper's protocol lives in ``configs/hfgi3d.yaml``; ``fit`` links ``lpips_resize`` and
    ``lpips_weights_vgg`` to the model's LPIPS, the novel-view half-ranges to the pseudo views'
    and the warp test to the pseudo views' visibility test.

    Args:
        lpips_resize: LPIPS input size (256 as EG3D/PTI); ``None`` keeps the image size.
        facenet: also report FaceNet (facenet-pytorch VGGFace2) identity; its weights must be cached.
        pose_accuracy: report ``pose_error`` on the identity views (MTCNN + the PnP estimator).
        identity_views: random novel views compared with the input (the paper uses 1).
        novel_yaw_rad, novel_pitch_rad: half-ranges of the novel views (identity draws, IBRNet corners).
        ibrnet_resolution: size of IBRNet's source and target views; ``None`` keeps the image size.
        ibrnet_samples, ibrnet_importance: coarse and fine samples per ray (released model: 64 + 64).
        ibrnet_chunk_rays: rays per IBRNet chunk (memory).
        warp_rel_tol, warp_grazing_cos: visibility test of the model-free consistency.
        strict: fail (instead of skipping with a notice) when a metric's network file is not given
            or cannot be used.
        seed: draws of the identity views.
        lpips_weights_vgg, lpips_weights_alex: explicit LPIPS weight files (see :mod:`hfgi3d.losses`).
        arcface_checkpoint: insightface arcface_torch ``backbone.pth`` (IResNet50/100); ``None`` skips identity.
        arcface_arch: ``r50`` / ``r100``; ``None`` infers it from the file.
        ibrnet_checkpoint: IBRNet's released ``model_255000.pth``; ``None`` skips the IBRNet metric.
    """

    lpips_resize: int | None
    facenet: bool
    pose_accuracy: bool
    identity_views: int
    novel_yaw_rad: float
    novel_pitch_rad: float
    ibrnet_resolution: int | None
    ibrnet_samples: int
    ibrnet_importance: int
    ibrnet_chunk_rays: int
    warp_rel_tol: float
    warp_grazing_cos: float
    strict: bool
    seed: int
    lpips_weights_vgg: str | None = None
    lpips_weights_alex: str | None = None
    arcface_checkpoint: str | None = None
    arcface_arch: str | None = None
    ibrnet_checkpoint: str | None = None


@dataclass
class EvaluationNetworks:
    """Frozen networks of the evaluation, and why the missing ones are missing."""

    lpips_alex: LPIPS
    lpips_vgg: LPIPS
    arcface: Any = None
    facenet: Any = None
    detector: Any = None
    ibrnet: Any = None
    skipped: dict[str, str] = field(default_factory=dict)
    """Metric key → reason, for metrics that cannot be computed with these networks."""

    def to(self, device: torch.device | str) -> EvaluationNetworks:
        for network in (self.lpips_alex, self.lpips_vgg, self.arcface, self.facenet, self.ibrnet):
            if network is not None:
                network.to(device)
        if self.detector is not None:
            self.detector.to(device)
            self.detector.device = torch.device(device)  # MTCNN moves its inputs to this
        return self


def _unavailable(config: EvaluationConfig, keys: tuple[str, ...], reason: str, skipped: dict[str, str]) -> None:
    if config.strict:
        raise FileNotFoundError(f"evaluation.metrics.strict is true but {', '.join(keys)} cannot be computed: {reason}")
    skipped.update(dict.fromkeys(keys, reason))


def load_networks(config: EvaluationConfig) -> EvaluationNetworks:
    """Load every network the config asks for (on the CPU); record the metrics that will be skipped.

    A file that is given but wrong is always an error; a file that is not given skips its metrics
    (or raises with ``strict``).
    """
    skipped: dict[str, str] = {}
    networks = EvaluationNetworks(
        lpips_alex=LPIPS(resize_to=config.lpips_resize, weights=config.lpips_weights_alex, net="alex"),
        lpips_vgg=LPIPS(resize_to=config.lpips_resize, weights=config.lpips_weights_vgg, net="vgg"),
        skipped=skipped,
    )
    identity = ("id_arcface",)
    if config.arcface_checkpoint is None:
        _unavailable(
            config,
            identity,
            "no ArcFace file: set evaluation.metrics.arcface_checkpoint to insightface's arcface_torch backbone.pth",
            skipped,
        )
    else:
        networks.arcface = load_arcface(config.arcface_checkpoint, config.arcface_arch)  # type: ignore[arg-type]
    if not config.facenet:
        skipped["id_facenet"] = "FaceNet identity is off (evaluation.metrics.facenet: false)"
    else:
        try:
            networks.facenet = load_facenet()
        except (FileNotFoundError, RuntimeError) as error:
            _unavailable(config, ("id_facenet",), str(error), skipped)
    if networks.arcface is not None or networks.facenet is not None or config.pose_accuracy:
        networks.detector = make_detector()
    if config.ibrnet_checkpoint is None:
        _unavailable(
            config,
            ("ibrnet_psnr", "ibrnet_ssim", "ibrnet_lpips"),
            "no IBRNet file: set evaluation.metrics.ibrnet_checkpoint to IBRNet's released model_255000.pth",
            skipped,
        )
    else:
        networks.ibrnet = load_ibrnet(Path(config.ibrnet_checkpoint))
    if not config.pose_accuracy:
        skipped["pose_error"] = POSE_OFF_REASON
    return networks


def novel_cameras(c25: Tensor, yaw_rad: Tensor, pitch_rad: Tensor) -> Tensor:
    """``N×25`` orbit cameras at the given offsets with the intrinsics of the ``1×25`` camera ``c25``."""
    _, intrinsics = split_c25(c25)
    return make_c25(orbit_cam2world(yaw_rad.cpu(), pitch_rad.cpu()).to(c25), intrinsics)


def consistency_cameras(c25: Tensor, yaw_rad: float, pitch_rad: float) -> Tensor:
    """The paper's 5 views: canonical (yaw = pitch = 0) and the 4 corners ``(±yaw, ±pitch)``."""
    yaw = torch.tensor([0.0, -yaw_rad, yaw_rad, -yaw_rad, yaw_rad])
    pitch = torch.tensor([0.0, -pitch_rad, -pitch_rad, pitch_rad, pitch_rad])
    return novel_cameras(c25, yaw, pitch)


def identity_cameras(c25: Tensor, count: int, yaw_rad: float, pitch_rad: float, seed: int) -> Tensor:
    """``count`` novel cameras drawn uniformly in ``yaw ∈ ±yaw_rad``, ``pitch ∈ ±pitch_rad`` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    yaw = (torch.rand(count, generator=generator) * 2 - 1) * yaw_rad
    pitch = (torch.rand(count, generator=generator) * 2 - 1) * pitch_rad
    return novel_cameras(c25, yaw, pitch)


def optical_axis_near(c25: Tensor, ray_start: float) -> float:
    """Nearest camera-``z`` of a point ``ray_start`` along any pixel ray (the corner rays are the most oblique)."""
    _, intrinsics = split_c25(c25)
    fx, fy = float(intrinsics[0, 0, 0]), float(intrinsics[0, 1, 1])
    cx, cy = float(intrinsics[0, 0, 2]), float(intrinsics[0, 1, 2])
    half_x = max(cx, 1 - cx) / fx  # tangent of the widest horizontal angle (normalized intrinsics)
    half_y = max(cy, 1 - cy) / fy
    return ray_start / math.sqrt(1 + half_x**2 + half_y**2)


def pose_errors(detector: Any, images: Tensor, c25: Tensor, estimator: PnPPoseEstimator) -> Tensor:
    """``N`` L2 distances (radians) between the cameras' (yaw, pitch) and those estimated from the renders.

    Raises:
        NoFaceError: MTCNN finds no face in a render.
    """
    landmarks = detect_best_faces(detector, images, name="novel view").landmarks  # N×5×2, render pixels
    estimated = estimator.fit(landmarks, images.shape[-1])  # roll, scale and shift are absorbed by the fit
    yaw_true, pitch_true = yaw_pitch_of(split_c25(c25.cpu().to(torch.float64))[0])
    return torch.hypot(estimated.yaw_rad.double() - yaw_true, estimated.pitch_rad.double() - pitch_true).float()


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="area")


Metrics = dict[str, float | None]
"""Metric key → value; a family's metric that could not be computed is absent or ``None``."""
Skips = dict[str, str]
"""Metric key → why it was not computed."""


@dataclass(frozen=True)
class Renders:
    """The generator's renders of one latent from some cameras, made once and shared by the metrics."""

    c25: Tensor  # N×25 cameras
    image: Tensor  # N×3×H×W, clamped to [-1, 1]
    image_depth: Tensor  # N×1×r×r camera depth at the neural rendering resolution r


@torch.no_grad()
def input_view_metrics(image: Tensor, reconstruction: Tensor, networks: EvaluationNetworks) -> tuple[Metrics, Skips]:
    """``psnr``, ``ssim``, ``ms_ssim`` (skipped below its minimum size), ``lpips_alex``, ``lpips_vgg``.

    Args:
        image: ``1×3×H×W`` input photo in ``[-1, 1]``.
        reconstruction: ``1×3×H×W`` render at the input camera in ``[-1, 1]``.
        networks: its two LPIPS networks are used.
    """
    metrics: Metrics = {"psnr": float(psnr(reconstruction, image)[0]), "ssim": float(ssim(reconstruction, image)[0])}
    skipped: Skips = {}
    if min(image.shape[-2:]) >= MS_SSIM_MIN_SIZE_PX:
        metrics["ms_ssim"] = float(ms_ssim(reconstruction, image)[0])
    else:
        skipped["ms_ssim"] = f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE_PX} px, these are {image.shape[-1]}"
    metrics["lpips_alex"] = float(networks.lpips_alex(reconstruction, image)[0])
    metrics["lpips_vgg"] = float(networks.lpips_vgg(reconstruction, image)[0])
    return metrics, skipped


@torch.no_grad()
def warp_metrics(
    image: Tensor, reconstruction: Renders, views: Renders, lpips: LPIPS, config: EvaluationConfig
) -> tuple[Metrics, Skips]:
    """Model-free consistency: ``warp_psnr``, ``warp_lpips``, ``warp_coverage`` averaged over ``views``.

    Args:
        image: ``1×3×H×W`` input photo in ``[-1, 1]``.
        reconstruction: the render at the input camera (its depth places the input's pixels).
        views: the renders warped back into the input view (the 5 :func:`consistency_cameras`).
        lpips: AlexNet LPIPS of the masked comparison.
        config: its ``warp_rel_tol`` and ``warp_grazing_cos`` set the visibility test.
    """
    warp = warp_consistency(
        image,
        reconstruction.image_depth,
        reconstruction.c25,
        views.image,
        views.image_depth,
        views.c25,
        lpips=lpips,
        rel_tol=config.warp_rel_tol,
        grazing_cos=config.warp_grazing_cos,
    )
    metrics: Metrics = {
        "warp_psnr": finite_mean(warp.psnr),
        "warp_lpips": None if warp.lpips is None else finite_mean(warp.lpips),
        "warp_coverage": float(warp.coverage.mean()),
    }
    return metrics, {}


@torch.no_grad()
def ibrnet_metrics(
    ibrnet: IBRNet,
    lpips: LPIPS,
    image: Tensor,
    c25: Tensor,
    views: Renders,
    rendering: RenderingConfig,
    config: EvaluationConfig,
) -> tuple[Metrics, Skips]:
    """The paper's consistency: ``ibrnet_psnr``, ``ibrnet_ssim``, ``ibrnet_lpips`` of IBRNet's input view.

    Args:
        ibrnet: from :func:`hfgi3d.metrics.ibrnet.load_ibrnet`.
        lpips: AlexNet LPIPS.
        image: ``1×3×H×W`` input photo in ``[-1, 1]``, the target IBRNet predicts.
        c25: ``1×25`` input camera.
        views: IBRNet's source views (the 5 :func:`consistency_cameras` renders).
        rendering: the generator's rendering options; its ray range bounds IBRNet's samples.
        config: ``ibrnet_resolution`` (sources and target are area-resized to it), samples, chunk size.
    """
    size = config.ibrnet_resolution or image.shape[-1]
    predicted = render_ibrnet(
        ibrnet,
        _resize(views.image, size),
        views.c25,
        c25,
        resolution=size,
        near=optical_axis_near(c25, rendering.ray_start),
        far=rendering.ray_end,
        n_samples=config.ibrnet_samples,
        n_importance=config.ibrnet_importance,
        chunk_rays=config.ibrnet_chunk_rays,
    )["rgb"]  # 1×3×size×size
    target = _resize(image, size)
    metrics: Metrics = {
        "ibrnet_psnr": float(psnr(predicted, target)[0]),
        "ibrnet_ssim": float(ssim(predicted, target)[0]),
        "ibrnet_lpips": float(lpips(predicted, target)[0]),
    }
    return metrics, {}


@torch.no_grad()
def identity_metric(
    key: str, network: Any, similarity: Callable[..., Tensor], detector: Any, image: Tensor, novel: Tensor
) -> tuple[Metrics, Skips]:
    """``id_arcface`` / ``id_facenet``: mean cosine between the input's face and each novel view's
    (skipped with MTCNN's message when the input or a novel view shows no face).

    Args:
        key: the metric's name.
        network, similarity: ArcFace and :func:`~hfgi3d.metrics.arcface.identity_similarity`, or
            FaceNet and :func:`~hfgi3d.metrics.arcface.facenet_similarity`.
        detector: MTCNN, which finds the faces.
        image: ``1×3×H×W`` input photo in ``[-1, 1]``.
        novel: ``N×3×H×W`` renders at the :func:`identity_cameras` in ``[-1, 1]``.
    """
    inputs = image.expand(len(novel), -1, -1, -1)  # N×3×H×W
    try:
        values = similarity(network, detector, inputs, novel, names=("input", "novel view"))
    except NoFaceError as error:
        return {}, {key: str(error)}
    return {key: float(values.mean())}, {}


@torch.no_grad()
def pose_metrics(detector: Any, novel: Renders) -> tuple[Metrics, Skips]:
    """``pose_error``: mean of :func:`pose_errors` over the novel views (skipped when one has no face)."""
    try:
        return {"pose_error": float(pose_errors(detector, novel.image, novel.c25, PnPPoseEstimator()).mean())}, {}
    except NoFaceError as error:
        return {}, {"pose_error": str(error)}


@dataclass
class EvaluationInputs:
    """What the metric families read: the photo, its camera, the networks, the settings, and the
    generator's renders of the latent, each made once when a family first asks for it
    (:func:`evaluate`'s arguments)."""

    generator: TriPlaneGenerator
    ws: Tensor
    image: Tensor
    c25: Tensor
    networks: EvaluationNetworks
    config: EvaluationConfig

    @cached_property
    def planes(self) -> Tensor:
        return self.generator.planes(self.ws)

    def render(self, cameras: Tensor) -> Renders:
        out = self.generator.render_cameras(self.planes, self.ws, cameras, deterministic=True)
        return Renders(cameras, out["image"].clamp(-1, 1), out["image_depth"])

    @cached_property
    def reconstruction(self) -> Renders:
        """The render at the input camera."""
        return self.render(self.c25)

    @cached_property
    def views(self) -> Renders:
        """The 5 :func:`consistency_cameras` renders (warp and IBRNet consistency)."""
        return self.render(consistency_cameras(self.c25, self.config.novel_yaw_rad, self.config.novel_pitch_rad))

    @cached_property
    def novel(self) -> Renders:
        """The :func:`identity_cameras` renders (identity and pose error)."""
        config = self.config
        cameras = identity_cameras(
            self.c25, config.identity_views, config.novel_yaw_rad, config.novel_pitch_rad, config.seed
        )
        return self.render(cameras)


FamilyFunction = Callable[[EvaluationInputs], tuple[Metrics, Skips]]

FAMILY_FUNCTIONS: dict[str, FamilyFunction] = {
    "input view": lambda e: input_view_metrics(e.image, e.reconstruction.image, e.networks),
    "ArcFace identity": lambda e: identity_metric(
        "id_arcface", e.networks.arcface, identity_similarity, e.networks.detector, e.image, e.novel.image
    ),
    "FaceNet identity": lambda e: identity_metric(
        "id_facenet", e.networks.facenet, facenet_similarity, e.networks.detector, e.image, e.novel.image
    ),
    "IBRNet consistency": lambda e: ibrnet_metrics(
        e.networks.ibrnet, e.networks.lpips_alex, e.image, e.c25, e.views, e.generator.config.rendering, e.config
    ),
    "warp consistency": lambda e: warp_metrics(e.image, e.reconstruction, e.views, e.networks.lpips_alex, e.config),
    "pose error": lambda e: pose_metrics(e.networks.detector, e.novel),
}
"""Family of :data:`hfgi3d.metrics.registry.METRICS` → the function that computes its metrics."""


@torch.no_grad()
def evaluate(
    generator: TriPlaneGenerator,
    ws: Tensor,
    image: Tensor,
    c25: Tensor,
    networks: EvaluationNetworks,
    config: EvaluationConfig,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Score one inversion; returns ``(metrics, skipped)`` (see the module docstring for the keys).

    Runs, in table order, each family of :data:`FAMILY_FUNCTIONS` that has a metric the networks
    can compute (``networks.skipped`` holds the others, with the reasons).

    Args:
        generator: the (tuned) generator, in eval mode.
        ws: ``1×num_ws×w_dim`` inverted latent.
        image: ``1×3×H×W`` input photo in ``[-1, 1]`` (``H`` = the generator's output size).
        c25: ``1×25`` input camera.
        networks: from :func:`load_networks`, on ``image``'s device.
        config: the evaluation settings.
    """
    inputs = EvaluationInputs(generator, ws, image, c25, networks, config)
    metrics: Metrics = dict.fromkeys(METRIC_KEYS)
    skipped = dict(networks.skipped)
    for family, keys in families().items():
        if all(key in networks.skipped for key in keys):
            continue
        family_metrics, family_skipped = FAMILY_FUNCTIONS[family](inputs)
        metrics.update(family_metrics)
        skipped.update(family_skipped)
    return metrics, skipped
