"""The inversion's settings by stage, typed: the groups of ``fit``'s ``model`` config.

=============================  ==========================================================
``model.estimate.*``           stage 1 (:class:`EstimateConfig`, docs/method.md §4)
``model.occluded.*``           ``w_o`` (:class:`OccludedConfig`, §5)
``model.pseudo_multiview.*``   stage 2 (:class:`PseudoMultiviewConfig`, §6)
``model.loss.*``               the loss weights and LPIPS (:class:`LossConfig`)
``model.camera.*``             camera refinement in stage 1 (:class:`CameraConfig`)
=============================  ==========================================================

jsonargparse makes one option group of each dataclass (``--model.estimate.steps 500``), the
module gets the dataclasses, and a misspelt field is an error in the parser, in mypy and in the
fast pre-check (which reads the option names of the same parser, :mod:`hfgi3d.fit_reference`).
:func:`stage_spans` is the schedule every part reads: the module, ``trainer.max_steps`` and the
callbacks (through the module). :data:`FORMER_KEYS` maps the flat ``model.*`` names of earlier
versions to these, so that older run folders still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ESTIMATE = "estimate"
OCCLUDED = "occluded"
PSEUDO_MULTIVIEW = "pseudo_multiview"
STAGES = (ESTIMATE, OCCLUDED, PSEUDO_MULTIVIEW)
"""The stages in the order they run; also their config groups and log prefixes."""

AuxTarget = Literal["masked", "blended"]
AuxNormalization = Literal["mask", "image"]


@dataclass(frozen=True)
class EstimateConfig:
    """Stage 1: the latent fitted to the input view, G frozen (``w_e``).

    Args:
        steps: stage-1 length (0: none; ``edit-texture`` starts after it).
        lr: peak Adam learning rate.
        lr_rampup: fraction of the stage over which the lr warms up linearly (0: none).
        lr_rampdown: fraction at the end over which it ramps down (cosine; 0: none).
        noise: latent noise ``w_std·noise`` at the start, decaying to 0 (the PTI projector's).
        noise_ramp: fraction of the stage over which the noise decays (quadratically).
    """

    steps: int
    lr: float
    lr_rampup: float = 0.0
    lr_rampdown: float = 0.0
    noise: float = 0.0
    noise_ramp: float = 0.75


@dataclass(frozen=True)
class OccludedConfig:
    """The ``occluded`` stage: ``w_o``, from ``w_e``, fitted to the in-distribution part of the
    photo (``D ≤ θ``), G frozen. It runs only with pseudo views.

    Args:
        steps: its length (0 skips it: the ``no_occluded`` ablation needs no ``w_o``).
        lr: Adam learning rate (constant).
        difference_threshold: θ of the in-distribution mask, per-pixel RGB L2 in [-1, 1] units.
    """

    steps: int
    lr: float
    difference_threshold: float = 0.25


@dataclass(frozen=True)
class PseudoMultiviewConfig:
    """Stage 2: G tuned on the input view and the auxiliary (pseudo) views.

    Args:
        steps: stage-2 length.
        lr: Adam learning rate of G (and of the latent unless ``latent_lr``).
        lr_rampdown: fraction at the end over which the lr ramps down (cosine; 0: constant).
        latent_lr: the latent's own lr when it is tuned (None: ``lr``).
        freeze_latent: keep the latent fixed (the authors' release).
        use_pseudo_views: False tunes on the input view only: the PTI baseline.
        aux_target: what an auxiliary render is compared with: ``masked`` (Eq. 5: ``O_i`` on
            ``M_o`` and ``V_i`` on ``M_v``) or ``blended`` (``v_i``, unmasked, as the release).
        aux_normalization: what the masked terms are means over: ``mask`` (the pixels of their
            mask, so a small region weighs as much as a large one) or ``image`` (every pixel, as
            Eq. 5 is written; the two terms together weigh one full view).
    """

    steps: int
    lr: float
    lr_rampdown: float = 0.0
    latent_lr: float | None = None
    freeze_latent: bool = False
    use_pseudo_views: bool = True
    aux_target: AuxTarget = "masked"
    aux_normalization: AuxNormalization = "mask"


@dataclass(frozen=True)
class LossConfig:
    """The weights of the objectives (:mod:`hfgi3d.objectives`) and the LPIPS network they use.

    Args:
        lambda_l2, lambda_lpips: ``L_rec = λ_l2·MSE + λ_lpips·LPIPS(VGG)``; ``lambda_lpips`` 0
            makes no VGG pass at all.
        lambda_input: weight of the input view's ``L_rec`` in stage 2.
        lambda_occluded, lambda_visible: weights of the two masked auxiliary terms (``masked``).
        lambda_pseudo: weight of the blended auxiliary term (``blended``).
        lpips_resize: LPIPS input size (the projectors use 256); None keeps the render size.
        lpips_weights: explicit LPIPS weights file (see :mod:`hfgi3d.losses`); None searches.
    """

    lambda_l2: float = 1.0
    lambda_lpips: float = 1.0
    lambda_input: float = 1.0
    lambda_occluded: float = 1.0
    lambda_visible: float = 1.0
    lambda_pseudo: float = 1.0
    lpips_resize: int | None = 256
    lpips_weights: str | None = None


@dataclass(frozen=True)
class CameraConfig:
    """Refinement of the input camera in stage 1 (off in the paper; ``configs/photo.yaml`` turns it on).

    Args:
        refine: optimize yaw, pitch and roll offsets (radians, about the pivot; roll about the
            viewing axis) with the latent; frozen when stage 1 ends, and used by every later stage,
            the pseudo views and the outputs.
        lr: the camera's lr (a parameter group of stage 1's Adam).
        lr_rampup: fraction of stage 1 over which that lr warms up linearly.
        warmup_steps: first steps of stage 1 that move the camera only (the latent waits).
        refine_translation: also refine the camera centre (world units).
    """

    refine: bool = False
    lr: float = 0.01
    lr_rampup: float = 0.05
    warmup_steps: int = 30
    refine_translation: bool = False


CONFIG_GROUPS = {
    "estimate": EstimateConfig,
    "occluded": OccludedConfig,
    "pseudo_multiview": PseudoMultiviewConfig,
    "loss": LossConfig,
    "camera": CameraConfig,
}
"""The typed groups of ``model`` (``model.<name>.*``) and their dataclasses."""


def stage_lengths(
    estimate_steps: int, occluded_steps: int, pseudo_multiview_steps: int, use_pseudo_views: bool
) -> tuple[int, int, int]:
    """Steps of each stage of :data:`STAGES`: no ``occluded`` stage without pseudo views."""
    return estimate_steps, occluded_steps if use_pseudo_views else 0, pseudo_multiview_steps


def total_steps(estimate_steps: int, occluded_steps: int, pseudo_multiview_steps: int, use_pseudo_views: bool) -> int:
    """All stages' steps: ``trainer.max_steps`` (``fit`` links it)."""
    return sum(stage_lengths(estimate_steps, occluded_steps, pseudo_multiview_steps, use_pseudo_views))


def stage_spans(lengths: tuple[int, int, int]) -> list[tuple[str, int, int]]:
    """``(stage, first step, end step)`` of each stage with steps, in order."""
    spans, first = [], 0
    for stage, length in zip(STAGES, lengths, strict=True):
        if length > 0:
            spans.append((stage, first, first + length))
        first += length
    return spans


FORMER_KEYS = {
    "estimate_steps": "estimate.steps",
    "estimate_lr": "estimate.lr",
    "estimate_lr_rampup": "estimate.lr_rampup",
    "estimate_lr_rampdown": "estimate.lr_rampdown",
    "estimate_noise": "estimate.noise",
    "estimate_noise_ramp": "estimate.noise_ramp",
    "occluded_steps": "occluded.steps",
    "occluded_lr": "occluded.lr",
    "difference_threshold": "occluded.difference_threshold",
    "pseudo_multiview_steps": "pseudo_multiview.steps",
    "pseudo_multiview_lr": "pseudo_multiview.lr",
    "pseudo_multiview_lr_rampdown": "pseudo_multiview.lr_rampdown",
    "pseudo_multiview_latent_lr": "pseudo_multiview.latent_lr",
    "freeze_latent": "pseudo_multiview.freeze_latent",
    "use_pseudo_views": "pseudo_multiview.use_pseudo_views",
    "aux_target": "pseudo_multiview.aux_target",
    "aux_normalization": "pseudo_multiview.aux_normalization",
    "lambda_l2": "loss.lambda_l2",
    "lambda_lpips": "loss.lambda_lpips",
    "lambda_occluded": "loss.lambda_occluded",
    "lambda_visible": "loss.lambda_visible",
    "lambda_pseudo": "loss.lambda_pseudo",
    "lpips_resize": "loss.lpips_resize",
    "lpips_weights": "loss.lpips_weights",
    "refine_camera": "camera.refine",
    "camera_lr": "camera.lr",
    "camera_lr_rampup": "camera.lr_rampup",
    "camera_warmup_steps": "camera.warmup_steps",
    "refine_translation": "camera.refine_translation",
}
"""Former ``model.<key>`` → its place now, ``model.<group>.<field>`` (:func:`upgrade_model_config`)."""


def upgrade_model_config(model: dict[str, object]) -> list[str]:
    """Move the former flat keys of a ``model`` config (a run folder's ``config.yaml`` from an
    earlier version) into their groups, in place; returns the keys moved."""
    moved = []
    for former, current in FORMER_KEYS.items():
        if former in model:
            group, field = current.split(".")
            node = model.setdefault(group, {})
            if isinstance(node, dict):
                node[field] = model.pop(former)
                moved.append(former)
    return moved
