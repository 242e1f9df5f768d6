"""Pseudo-multi-view inversion of a batch of photos (docs/method.md §4–§6) as a LightningModule.

Each photo of the batch (``photos``, N; one unless ``data.images`` and ``data.batch_size`` say
otherwise) has its own latent, its own copy of the generator's weights
(:class:`~hfgi3d.generator.stacked.StackedGenerator`), its own camera offsets and its own Adam
moments; every loss is computed per photo and their sum is minimized, so each photo follows the
single-photo schedule exactly as it would alone. A photo whose loss turns non-finite is dropped
(its error kept in :attr:`InversionModule.failures`); the others go on. With one photo a
non-finite loss stops the fit, as there is nothing left to go on with.

Three scheduled stages, with manual optimization, each with its own optimizer, logs and
progress bar:

* ``estimate`` (``model.estimate``): G frozen; the latent (``w`` or ``W+``) starts at ``w_avg``
  and is fitted to the input view with LPIPS + L2. The result is ``w_e``.
* ``occluded`` (``model.occluded``; none without pseudo views): ``w_o``, from ``w_e``, is fitted
  to the in-distribution part of the input (``D = ‖x − G(w_e, p0)‖₂ ≤ θ``), G frozen.
* ``pseudo_multiview`` (``model.pseudo_multiview``): on entering it, the module hands the
  DataModule ``w_e``, ``w_o``, a frozen copy of the stage-1 generator and the (refined) input
  cameras, and the DataModule builds the pseudo views from them; then G is
  tuned (PTI-style, latent optionally frozen) on the input view plus ``aux_views_per_step``
  auxiliary views per step. ``pseudo_multiview.aux_target`` picks what an auxiliary render is
  compared with: ``masked`` (the paper's Eq. 5: ``O_i`` where ``M_o`` plus ``V_i`` where ``M_v``)
  or ``blended`` (the blended pseudo view ``v_i``, no masks, as the authors' release trains).
  ``pseudo_multiview.use_pseudo_views=False`` gives the PTI baseline.

Each stage's settings are a typed group (:mod:`hfgi3d.stages`); the loss terms are the functions
of :mod:`hfgi3d.objectives`, weighted by ``model.loss``.

Work done once, not per step: the tri-planes of a latent are computed once per step and every
camera of the step (the input and the auxiliary views) is rendered in one batched call; the
LPIPS features of fixed targets (the photo, each pre-built pseudo view with its mask) are
computed when a stage starts, so only renders go through VGG. With the ``masked`` target the
occluded and visible terms share one VGG pass of the doubly masked render batch; the masked
terms stay exact because LPIPS masks its inputs before the network (``M·x``), so a masked
target's features depend on the target and the mask only.

The module never reads or writes the DataModule's state: the photos, their cameras and each
step's auxiliary views (with their masks) come with the step's batch, and its only calls on the
DataModule are the two of :class:`~hfgi3d.data.datamodule.PseudoViewSource` (load the photos at
the generator's resolution; take the stage-1 result). A stage is entered between steps (at the
end of the step before it, or when training starts or resumes), so the batch of a stage's first
step is assembled after the set-up and already holds the pseudo views.

Log keys are slash-namespaced by stage (``estimate/loss_lpips``, ``occluded/loss``,
``pseudo_multiview/loss_visible``); the ``fit`` command adds ``{stage}/lr`` (Lightning's
``LearningRateMonitor``, reading each stage's ``LambdaLR``) and ``{stage}/step_time_s``
(:class:`hfgi3d.callbacks.timing.StepTimer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from hfgi3d.camera_refinement import CameraRefinement
from hfgi3d.cameras import frontal_c25
from hfgi3d.data.datamodule import PseudoViewSource, StageOne
from hfgi3d.data.pseudo_views import PseudoViews
from hfgi3d.generator import TriPlaneGenerator, open_generator, round_weights
from hfgi3d.generator.stacked import StackedGenerator
from hfgi3d.geometry import difference_mask
from hfgi3d.losses import LPIPS, LpipsTarget, mse_per_sample
from hfgi3d.objectives import reconstruction, weighted_sum
from hfgi3d.stages import (
    CONFIG_GROUPS,
    ESTIMATE,
    OCCLUDED,
    PSEUDO_MULTIVIEW,
    STAGES,
    CameraConfig,
    EstimateConfig,
    LossConfig,
    OccludedConfig,
    PseudoMultiviewConfig,
    stage_lengths,
    stage_spans,
)

CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
RNG_KEY = "hfgi3d_rng_state"
"""Checkpoint entry with the global RNG state (CPU and CUDA) of the step to run next."""
FAILURES_KEY = "hfgi3d_failures"
"""Checkpoint entry with the reasons the dropped photos were dropped (``{photo index: reason}``)."""


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _adam(params: Sequence[Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has one for the parameters' device, else foreach."""
    try:
        return torch.optim.Adam(list(params), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(list(params), lr=lr, foreach=True)


def lr_factor(step: int, total: int, rampup: float, rampdown: float) -> float:
    """Multiplier of the peak lr at ``step``: a linear warm-up over ``rampup``·total steps and a
    cosine ramp-down over the last ``rampdown``·total steps (the PTI/EG3D projector schedule;
    0 disables either ramp). Used as a ``LambdaLR`` factor."""
    t = step / max(total, 1)
    factor = 1.0
    if rampdown > 0:
        factor *= 0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / rampdown) * math.pi)
    if rampup > 0:
        factor *= min(1.0, t / rampup)
    return factor


class InversionModule(L.LightningModule):
    """Invert a batch of photos into EG3D with pseudo-multi-view optimization.

    The values of the paper and of the authors' release live in ``configs/hfgi3d.yaml`` and
    ``configs/hfgi3d_official.yaml``; every argument is a config entry (``model.*``), and the
    stages, the loss and the camera refinement are typed groups (:mod:`hfgi3d.stages`).
    :meth:`from_config` builds the module from a plain nested config.

    Args:
        generator: EG3D ``.pkl``, hfgi3d ``.pt``, GeneratorConfig ``.yaml`` or ``tiny`` (the small
            random generator of ``configs/demo.yaml``).
        latent_space: ``w`` (one 512-d vector) or ``w+`` (one per layer).
        w_avg_samples: samples for the starting latent and its spread (frontal camera).
        estimate: stage 1 (``model.estimate.*``).
        occluded: the ``occluded`` stage, ``w_o`` (``model.occluded.*``).
        pseudo_multiview: stage 2 (``model.pseudo_multiview.*``).
        loss: the objectives' weights and LPIPS (``model.loss.*``).
        camera: camera refinement in stage 1 (``model.camera.*``; see :meth:`stage_one_camera`).
        seed: generator init (random architectures) and latent sampling.
        neural_rendering_resolution: override of the generator's (None keeps it).
        compile: ``torch.compile`` mode for the step's rendering and LPIPS (``none``: eager); a
            model that cannot compile runs eagerly, with one line saying why.
        render_batch: cameras rendered per call in a step (see :attr:`render_batch`; 0: by device).
        stage_one_from: a finished run's ``latent.pt``: skip stage 1 and take its ``w_e`` and ``w_o``
            (``estimate.steps`` and ``occluded.steps`` must be 0). ``edit-texture`` uses it to rebuild
            the pseudo views of an edited photo on the run's geometry and rerun stage 2.
        photos: N, photos inverted together (``fit`` takes it from the DataModule's batch).
        photos_per_call: photos whose generators run in one batched call
            (:class:`~hfgi3d.generator.stacked.StackedGenerator`; 0: all on a GPU, one at a time on a CPU).

    Per-photo tensors (the latents, camera offsets and cameras) have the photos as their leading
    dimension.
    """

    w_std: Tensor
    ws_estimate: Tensor
    latent_ready: Tensor
    stage_entered: Tensor
    occluded_mask: Tensor
    alive: Tensor

    def __init__(
        self,
        generator: str,
        latent_space: Literal["w", "w+"],
        w_avg_samples: int,
        estimate: EstimateConfig,
        occluded: OccludedConfig,
        pseudo_multiview: PseudoMultiviewConfig,
        loss: LossConfig,
        camera: CameraConfig,
        seed: int,
        neural_rendering_resolution: int | None = None,
        compile: CompileMode = "none",
        render_batch: int = 0,
        stage_one_from: str | None = None,
        photos: int = 1,
        photos_per_call: int = 0,
    ) -> None:
        arguments = {name: value for name, value in dict(locals()).items() if name not in ("self", "__class__")}
        super().__init__()
        if stage_one_from is not None and (estimate.steps or occluded.steps):
            raise ValueError(
                "model.stage_one_from takes w_e and w_o from a finished run: "
                "set model.estimate.steps and model.occluded.steps to 0"
            )
        self.estimate, self.occluded, self.pseudo_multiview = estimate, occluded, pseudo_multiview
        self.loss, self.camera_config = loss, camera
        self.generator_source, self.seed, self.w_avg_samples = generator, seed, w_avg_samples
        self.neural_rendering_resolution, self.compile_mode = neural_rendering_resolution, compile
        self.stage_one_from, self.render_batch_setting = stage_one_from, render_batch
        # The hyperparameters as plain values (checkpoints, loggers): each group a dict.
        self.save_hyperparameters(
            {name: asdict(value) if is_dataclass(value) else value for name, value in arguments.items()}  # type: ignore[arg-type]
        )
        self.automatic_optimization = False
        self.G = StackedGenerator(open_generator(generator, seed), photos, photos_per_call)
        self.G.requires_grad_(False)
        # Held in a tuple so that the frozen VGG16 is not a submodule: it stays out of
        # checkpoints (its weights come from the LPIPS sources) and is moved in on_fit_start.
        self._lpips = (LPIPS(resize_to=loss.lpips_resize, weights=loss.lpips_weights),)
        num_ws = 1 if latent_space == "w" else self.G.num_ws
        w_shape = (photos, self.G.num_ws, self.G.config.w_dim)
        self.latent = nn.Parameter(torch.zeros(photos, num_ws, self.G.config.w_dim))
        # w_o, optimized in its own stage (and checkpointed there); the views are built from it.
        self.occluded_latent = nn.Parameter(torch.zeros(w_shape))
        self.register_buffer("w_std", torch.zeros(()))
        self.register_buffer("ws_estimate", torch.zeros(w_shape))
        # D (N×1×H×W), computed at the occluded stage's first step from its batch; again (deterministic)
        # after resuming, not saved.
        self.register_buffer("occluded_mask", torch.zeros(0), persistent=False)
        # Stage state lives in buffers so that it is restored with the weights, before on_fit_start
        # (Lightning restores global_step only afterwards): the index in STAGES of the last stage entered.
        self.register_buffer("latent_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("stage_entered", torch.zeros((), dtype=torch.long))
        # Camera refinement: offsets optimized in stage 1, then frozen into the cameras that replace
        # the DataModule's input cameras.
        self.camera = CameraRefinement(photos, translate=camera.refine_translation)
        # Photos still being inverted; a non-finite loss drops one (its reason in `failures`).
        self.register_buffer("alive", torch.ones(photos, dtype=torch.bool))
        self.failures: dict[int, str] = {}
        self._targets: dict[str, LpipsTarget] = {}
        self._render_fn: Callable[[Tensor, Tensor], Tensor] = self._render_images
        self._rng_at_step_start: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self.result_dtype = torch.float32
        """The precision the results are saved in: :class:`~hfgi3d.callbacks.outputs.InversionOutputs`
        sets it when the fit starts; :meth:`finish_weights` rounds the tuned generator to it."""
        self._weights_finished = False

    # Stages and helpers ---------------------------------------------------------------------

    @classmethod
    def from_config(cls, model: Mapping[str, Any]) -> InversionModule:
        """The module from a plain nested ``model`` config (a preset's, as :func:`hfgi3d.presets.load_preset`
        gives it), each group's dict made its dataclass."""
        groups = {name: kind(**model[name]) for name, kind in CONFIG_GROUPS.items() if name in model}
        return cls(**{**model, **groups})

    @property
    def _data(self) -> PseudoViewSource:
        """The trainer's DataModule, through the two calls the module makes on it."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, PseudoViewSource):
            raise TypeError(
                "InversionModule needs a DataModule with load_input and prepare_pseudo_views "
                "(hfgi3d.data.datamodule.PseudoViewDataModule)"
            )
        return datamodule

    @property
    def photo_count(self) -> int:
        """N, the photos inverted together."""
        return self.G.count

    def finish_weights(self) -> None:
        """Round the tuned generator to :attr:`result_dtype`, once, when the fit has ended: every
        callback that reads the result calls this first, so whichever runs first, all of them (the
        result files, ``metrics.json``) see the weights as saved."""
        if not self._weights_finished and self.result_dtype != torch.float32:
            round_weights(self.G, self.result_dtype)
        self._weights_finished = True

    def photo_generator(self, photo: int) -> TriPlaneGenerator:
        """Photo ``photo``'s generator as it stands (a stand-alone copy)."""
        return self.G.generator(photo)

    @property
    def stage_lengths(self) -> tuple[int, int, int]:
        """Steps of each stage (no ``occluded`` stage without pseudo views)."""
        return stage_lengths(
            self.estimate.steps,
            self.occluded.steps,
            self.pseudo_multiview.steps,
            self.pseudo_multiview.use_pseudo_views,
        )

    @property
    def total_steps(self) -> int:
        return sum(self.stage_lengths)

    def stage_spans(self) -> list[tuple[str, int, int]]:
        """``(stage, first step, end step)`` of each stage with steps, in order."""
        return stage_spans(self.stage_lengths)

    def stage_at(self, step: int) -> str:
        spans = self.stage_spans()
        return next((stage for stage, _, end in spans if step < end), spans[-1][0])

    def ws(self) -> Tensor:
        """The current latents broadcast to ``N×num_ws×w_dim``."""
        return self.latent.expand(-1, self.G.num_ws, -1)

    @property
    def ws_occluded(self) -> Tensor:
        """``w_o`` (``N×num_ws×w_dim``, detached)."""
        return self.occluded_latent.detach()

    def _render_images(self, ws: Tensor, cameras: Tensor) -> Tensor:
        """Images ``N×K×3×H×W`` of each photo's latent (``ws``: ``N×num_ws×w_dim``) from its ``K``
        cameras (``N×K×25``): the tri-planes once, then the neural rendering and super-resolution
        of the cameras in batches of :attr:`render_batch`."""
        rendered = self.G.synthesis_cameras(ws, cameras, self.render_batch, self.neural_rendering_resolution)
        return rendered["image"]

    @property
    def render_batch(self) -> int:
        """Cameras per neural rendering + super-resolution call (``model.render_batch``; ``0``: all
        of a step's cameras on a GPU, one at a time on a CPU). Measured with the FFHQ-512
        architecture: on the development machine's 2-core CPU rendering 2 cameras at once (forward
        and backward) takes 2.6× one camera, so one by one is faster; on an H100 a batch of 4 takes
        2.9× a batch of 1 (benchmarks/README.md), so batching pays."""
        if self.render_batch_setting > 0:
            return int(self.render_batch_setting)
        return 1 if self.device.type == "cpu" else 2**31

    @property
    def lpips(self) -> LPIPS:
        return self._lpips[0]

    def _lpips_distance(self, pred: Tensor, target: LpipsTarget) -> Tensor:
        return self.lpips.distance_to(pred, target)

    def _per_photo(self, values: Tensor) -> Tensor:
        """Per-image values (photo-major, the same count for every photo) → each photo's mean, ``N``."""
        return values.reshape(self.photo_count, -1).mean(1)

    @property
    def uses_lpips(self) -> bool:
        """Whether ``L_rec`` has an LPIPS term: with ``lambda_lpips`` 0 no VGG pass is made at all."""
        return self.loss.lambda_lpips != 0

    def _terms(
        self, pred: Tensor, image: Tensor, mask: Tensor | None, target: Callable[[], LpipsTarget]
    ) -> dict[str, Tensor]:
        """``L_rec`` of renders against a target whose LPIPS features ``target()`` gives (asked only when
        LPIPS counts): ``{loss, loss_l2[, loss_lpips]}``, each ``N``: a photo's mean over its images
        (``pred`` photo-major)."""
        loss_l2 = self._per_photo(mse_per_sample(pred, image, mask))
        if not self.uses_lpips:
            return {"loss": reconstruction(loss_l2, None, self.loss), "loss_l2": loss_l2}
        loss_lpips = self._per_photo(self._lpips_distance(pred, target()))
        return {"loss": reconstruction(loss_l2, loss_lpips, self.loss), "loss_l2": loss_l2, "loss_lpips": loss_lpips}

    def _target(self, key: str, image: Tensor, mask: Tensor | None = None) -> LpipsTarget:
        """The prepared LPIPS target ``key`` (computed on first use in a stage, then reused)."""
        if key not in self._targets:
            with torch.no_grad():
                self._targets[key] = self.lpips.prepare(image, mask)
        return self._targets[key]

    # Lightning hooks ----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        self._data.load_input(self.G.config.img_resolution)

    def on_fit_start(self) -> None:
        max_steps = self.trainer.max_steps
        if max_steps != self.total_steps:
            raise ValueError(
                f"trainer.max_steps is {max_steps} but the stages take {self.total_steps} steps "
                "(estimate + occluded + pseudo_multiview); `python -m hfgi3d fit` sets it for you"
            )
        self.lpips.to(self.device)
        # G's mode picks how its modulated convolutions apply the styles (layers.modulated_conv2d).
        # In train mode they scale the activations around the shared kernel (fused=False): while G
        # is frozen (estimate, occluded) the backward pass then computes no kernel gradient, a
        # third fewer FLOPs per stage-1 step. Stage 2 tunes G, so it needs the kernel gradients
        # anyway, and there eval mode (the styles scale the kernel) saves the activation-sized
        # products (times in benchmarks/README.md, "Inversion and evaluation speed").
        self.G.train()
        self._targets = {}
        self.occluded_mask = self.occluded_mask.new_zeros(0)  # D: computed at the occluded stage's first step
        self._set_up_compile()
        if not bool(self.latent_ready):
            if self.stage_one_from is None:
                self._init_latent()
            else:
                self._load_stage_one(self.stage_one_from)

    @torch.no_grad()
    def _init_latent(self) -> None:
        """``latent = w_avg`` of ``w_avg_samples`` mappings under the frontal camera."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        z = torch.randn(self.w_avg_samples, self.G.config.z_dim, generator=generator).to(self.device)
        c = frontal_c25().to(self.device).expand(len(z), -1)
        w = self.G.mapping(z, c)[:, 0]  # S×w_dim (every photo starts from the same w_avg)
        w_avg = w.mean(0)
        self.w_std.copy_(((w - w_avg).square().sum() / len(w)).sqrt())
        self.latent.copy_(w_avg.expand_as(self.latent))
        self.latent_ready.fill_(True)

    @torch.no_grad()
    def _load_stage_one(self, path: str) -> None:
        """``w_e`` and ``w_o`` from a run's ``latent.pt``: the latent starts stage 2 at ``w_e``, as
        it did in that run, and the pseudo views are built from both."""
        latent = torch.load(path, map_location="cpu", weights_only=True)
        expected = tuple(self.ws_estimate.shape)
        for key in ("ws_estimate", "ws_occluded"):
            if key not in latent or tuple(latent[key].shape) != expected:
                found = tuple(latent[key].shape) if key in latent else "nothing"
                raise ValueError(f"{path}: {key} should be {expected} for this generator, found {found}")
        self.ws_estimate.copy_(latent["ws_estimate"])
        self.occluded_latent.copy_(latent["ws_occluded"])
        self.latent.copy_(self.ws_estimate[:, : self.latent.shape[1]])
        self.latent_ready.fill_(True)
        self.stage_entered.fill_(STAGES.index(OCCLUDED))  # w_e and w_o are known: stage 2 keeps them

    def configure_optimizers(self) -> Any:
        """One Adam per stage (fused where available), each with a ``LambdaLR`` stepped once per step of its stage."""
        latent_opt = _adam([self.latent], self.estimate.lr)
        occluded_opt = _adam([self.occluded_latent], self.occluded.lr)
        own_latent_lr = not self.pseudo_multiview.freeze_latent and self.pseudo_multiview.latent_lr is not None
        params = list(self.G.parameters()) + (
            [] if self.pseudo_multiview.freeze_latent or own_latent_lr else [self.latent]
        )
        tune_opt = _adam(params, self.pseudo_multiview.lr)
        if own_latent_lr:
            tune_opt.add_param_group({"params": [self.latent], "lr": self.pseudo_multiview.latent_lr})

        def estimate_factor(step: int) -> float:
            return lr_factor(step, self.estimate.steps, self.estimate.lr_rampup, self.estimate.lr_rampdown)

        def tune_factor(step: int) -> float:
            return lr_factor(step, self.pseudo_multiview.steps, 0.0, self.pseudo_multiview.lr_rampdown)

        optimizers = [latent_opt, occluded_opt, tune_opt]
        factors: list[Any] = [estimate_factor, lambda step: 1.0, tune_factor]
        if self.camera_config.refine:
            # The camera joins stage 1's Adam as a second parameter group (its own lr and ramp): a second
            # optimizer would count twice in Lightning's global_step, which the stages are scheduled on.
            latent_opt.param_groups[0]["name"] = "latent"
            latent_opt.add_param_group({"params": self.camera.trained(), "lr": self.camera_config.lr, "name": "camera"})
            factors[0] = [
                estimate_factor,
                lambda step: lr_factor(step, self.estimate.steps, self.camera_config.lr_rampup, 0.0),
            ]
        schedulers = [
            {"scheduler": LambdaLR(optimizer, factor), "name": f"{stage}/lr", "interval": "step"}
            for stage, optimizer, factor in zip(STAGES, optimizers, factors, strict=True)
        ]
        return optimizers, schedulers

    def _set_up_compile(self) -> None:
        """``torch.compile`` the step's rendering and the LPIPS trunk (``model.compile``)."""
        mode = None if self.compile_mode == "none" else self.compile_mode
        self._render_fn = torch.compile(self._render_images, mode=mode) if mode else self._render_images
        self.lpips.compile_trunk(mode)

    def _render(self, ws: Tensor, cameras: Tensor) -> Tensor:
        """:meth:`_render_images`, compiled when asked; a model that cannot compile falls back, once."""
        try:
            return self._render_fn(ws, cameras)
        except Exception as error:  # compilation errors come in many types (inductor, dynamo, C++ toolchain)
            if self._render_fn is self._render_images:
                raise
            rank_zero_warn(
                f"model.compile={self.compile_mode!r} failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
                "running eagerly"
            )
            self._render_fn = self._render_images
            self.lpips.compile_trunk(None)
            return self._render_images(ws, cameras)

    # Resuming gives the run an uninterrupted one would have: the global RNG (ray jitter, latent
    # noise) is saved as it was when the step in progress began, if that step has not updated the
    # parameters yet (an interruption: the resumed run repeats the step), and as it is otherwise
    # (a step done: the periodic checkpoints, which Lightning writes before the module's
    # on_train_batch_end), and restored before training.

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._rng_at_step_start = _rng_state()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._rng_at_step_start = None
        if self.global_step < self.total_steps:  # global_step: the next step (this one is done)
            self._enter_stage_of(self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = self._rng_at_step_start or _rng_state()
        checkpoint[FAILURES_KEY] = dict(self.failures)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        self.failures = dict(checkpoint.get(FAILURES_KEY, {}))

    def on_train_start(self) -> None:
        # Lightning has restored global_step by now (not yet in on_fit_start).
        if STAGES[int(self.stage_entered)] == PSEUDO_MULTIVIEW:  # resumed in stage 2
            self._enter_pseudo_multiview(resumed=True)
        if self.global_step < self.total_steps:
            self._enter_stage_of(self.global_step)
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self.global_step  # manual optimization: counts optimizer steps
        if len(batch["image"]) != self.photo_count:
            raise ValueError(
                f"the model inverts {self.photo_count} photo(s) but the batch holds {len(batch['image'])}; "
                "`python -m hfgi3d fit` sets model.photos for you"
            )
        stage = self.stage_at(step)
        if stage == ESTIMATE:
            return self._estimate_step(batch, step)
        if stage == OCCLUDED:
            return self._occluded_step(batch, step)
        return self._pseudo_multiview_step(batch, step)

    def _estimate_step(self, batch: dict[str, Tensor], step: int) -> Tensor:
        ws = self.ws()
        if self.estimate.noise > 0:
            fade = max(0.0, 1.0 - step / (self.estimate.noise_ramp * self.estimate.steps))
            # One draw for every photo: the noise a single-photo run from the same seed adds.
            ws = ws + torch.randn_like(ws[:1]) * self.w_std * self.estimate.noise * fade**2
        refining = self.refines_camera  # (the camera is frozen at the end of stage 1's last step)
        c25 = self.stage_one_camera(batch["c25"]) if refining else batch["c25"]
        render = self._render(ws, c25[:, None])[:, 0]  # N×3×H×W
        losses = self._terms(render, batch["image"], None, lambda: self._target("input", batch["image"]))
        camera_only = refining and step < self.camera_config.warmup_steps  # the latent waits (Adam skips it: no grad)
        self._optimize(
            STAGES.index(ESTIMATE), losses["loss"], ESTIMATE, step, frozen=(self.latent,) if camera_only else ()
        )
        if refining:
            yaw, pitch, roll = self.camera.angles.detach().unbind(1)
            losses = {**losses, "camera_yaw_rad": yaw, "camera_pitch_rad": pitch, "camera_roll_rad": roll}
            if self.camera_config.refine_translation:
                losses["camera_translation"] = self.camera.translation.detach().norm(dim=1)
            if step == self.estimate.steps - 1:
                self.camera.freeze(batch["c25"])  # the later stages, the pseudo views and the outputs use these
        self._log(ESTIMATE, losses)
        return losses["loss"]

    def stage_one_camera(self, c25: Tensor) -> Tensor:
        """Each photo's camera (``N×25``) moved by its offsets being refined (differentiable)."""
        return self.camera.moved(c25)

    @property
    def refines_camera(self) -> bool:
        """Whether stage 1 refines the input cameras (``model.camera.refine`` with stage-1 steps; a
        texture edit, which starts after stage 1, keeps the cameras it is given)."""
        return bool(self.camera_config.refine) and self.estimate.steps > 0

    def _frozen_camera(self, c25: Tensor) -> Tensor:
        """The input cameras after stage 1 (``c25``: the batch's): the refined ones when stage 1
        refined them (known from the settings: no device synchronisation)."""
        return self.camera.refined if self.refines_camera else c25

    def input_camera(self, c25: Tensor) -> Tensor:
        """The input cameras (``N×25``) as the fit uses them, from those the photos came with
        (``c25``, the batch's): as given without refinement; moved by the offsets while stage 1
        refines them; the refined cameras, frozen, after stage 1."""
        c25 = c25.to(self.device)
        return self.camera.current(c25) if self.refines_camera else c25

    def camera_record(self, c25: Tensor, photo: int = 0) -> dict[str, Any]:
        """``camera.json`` of a photo, given the cameras the photos came with (``c25``): the initial
        and refined 25-vectors and the offsets (radians, world units)."""
        return self.camera.record(c25.to(self.device), self.input_camera(c25), photo)

    def _occluded_step(self, batch: dict[str, Tensor], step: int) -> Tensor:
        """``w_o``: fit ``G(w, p0)·D`` to ``x·D`` with G frozen (docs/method.md §5)."""
        c25 = self._frozen_camera(batch["c25"])
        if self.occluded_mask.numel() == 0:  # the stage's first step (or the first after resuming)
            with torch.no_grad():
                rendered = self.G.synthesis(
                    self.ws_estimate, c25[:, None], self.neural_rendering_resolution, deterministic=True
                )
            self.occluded_mask = difference_mask(
                batch["image"], rendered["image"][:, 0].float(), self.occluded.difference_threshold
            )
        mask = self.occluded_mask
        render = self._render(self.occluded_latent, c25[:, None])[:, 0]
        image = batch["image"] * mask
        losses = self._terms(render * mask, image, None, lambda: self._target("occluded_input", image))
        self._optimize(STAGES.index(OCCLUDED), losses["loss"], OCCLUDED, step)
        self._log(OCCLUDED, losses)
        return losses["loss"]

    def _pseudo_multiview_step(self, batch: dict[str, Tensor], step: int) -> Tensor:
        ws = self.ws()
        cameras = self._frozen_camera(batch["c25"])[:, None]  # N×1×25
        if self.pseudo_multiview.use_pseudo_views:  # each photo's input view, then its auxiliary views
            cameras = torch.cat([cameras, batch["aux_c25"].reshape(self.photo_count, -1, 25)], dim=1)
        renders = self._render(ws, cameras)  # N×(1+A)×3×H×W: one generator call for every camera of the step
        input_losses = self._terms(renders[:, 0], batch["image"], None, lambda: self._target("input", batch["image"]))
        losses = {name.replace("loss", "loss_input", 1): value for name, value in input_losses.items()}
        terms = {}
        if self.pseudo_multiview.use_pseudo_views:
            terms = self.auxiliary_terms(renders[:, 1:].flatten(0, 1), batch)
            losses.update({f"loss_{name}": value for name, value in terms.items()})
        loss = weighted_sum({**terms, "input": losses["loss_input"]}, self.loss)
        losses["loss"] = loss
        self._optimize(STAGES.index(PSEUDO_MULTIVIEW), loss, PSEUDO_MULTIVIEW, step)
        self._log(PSEUDO_MULTIVIEW, losses)
        return loss

    def auxiliary_terms(self, render: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The auxiliary views' unweighted terms (see ``pseudo_multiview.aux_target``), each per photo (``N``),
        weighted by :func:`~hfgi3d.objectives.weighted_sum`.

        ``masked``: ``occluded = L_rec(M_o·G(w, p_i), M_o·O_i)`` and ``visible = L_rec(M_v·G(w, p_i), M_v·V_i)``;
        ``blended``: ``pseudo = L_rec(G(w, p_i), v_i)``; means over each photo's ``A`` views in ``render``
        (``N·A×3×H×W``, photo-major). The targets' LPIPS features come prepared (pre-built views, by
        ``aux_index``) or are computed here (views built on the fly).
        """
        count = len(render)
        if self.pseudo_multiview.aux_target == "masked":
            occluded_l2 = mse_per_sample(render, batch["aux_occluded"], batch["aux_mask_occluded"])  # N·A
            visible_l2 = mse_per_sample(render, batch["aux_visible"], batch["aux_mask_visible"])
            occluded_lpips = visible_lpips = None
            if self.uses_lpips:
                occluded_target, visible_target = self._aux_targets(batch, ("occluded", "visible"))
                # One VGG pass for both terms: the render under M_o, then under M_v.
                distances = self._lpips_distance(
                    torch.cat([render, render]), LpipsTarget.cat([occluded_target, visible_target])
                )
                occluded_lpips, visible_lpips = distances[:count], distances[count:]
            occluded = reconstruction(occluded_l2, occluded_lpips, self.loss)
            visible = reconstruction(visible_l2, visible_lpips, self.loss)
            if self.pseudo_multiview.aux_normalization == "image":  # a mask's mean times its share: the image's mean
                occluded = occluded * batch["aux_mask_occluded"].mean(dim=(1, 2, 3))
                visible = visible * batch["aux_mask_visible"].mean(dim=(1, 2, 3))
            return {"occluded": self._per_photo(occluded), "visible": self._per_photo(visible)}
        if self.pseudo_multiview.aux_target == "blended":

            def pseudo_target() -> LpipsTarget:
                return self._aux_targets(batch, ("pseudo",))[0]

            return {"pseudo": self._terms(render, batch["aux_pseudo"], None, pseudo_target)["loss"]}
        raise ValueError(f"aux_target must be 'masked' or 'blended', got {self.pseudo_multiview.aux_target!r}")

    def _aux_targets(self, batch: dict[str, Tensor], kinds: tuple[str, ...]) -> list[LpipsTarget]:
        """Prepared LPIPS targets of the batch's auxiliary views, one per kind."""
        sources = {
            "occluded": ("aux_occluded", "aux_mask_occluded"),
            "visible": ("aux_visible", "aux_mask_visible"),
            "pseudo": ("aux_pseudo", None),
        }
        prepared = []
        for kind in kinds:
            cached = self._targets.get(f"views/{kind}")
            if cached is not None and "aux_index" in batch:
                prepared.append(cached.select(batch["aux_index"]))
                continue
            image_key, mask_key = sources[kind]
            with torch.no_grad():
                prepared.append(self.lpips.prepare(batch[image_key], None if mask_key is None else batch[mask_key]))
        return prepared

    def _optimize(self, index: int, loss: Tensor, stage: str, step: int, frozen: Sequence[Tensor] = ()) -> None:
        """Backward the sum of the photos' losses (``loss``, ``N``) and step optimizer ``index`` and its
        scheduler; the ``frozen`` parameters' gradients are dropped first, so Adam leaves them (and their
        moments) as they are. A photo whose loss is not finite is dropped (:meth:`_drop`)."""
        bad = ~torch.isfinite(loss.detach()) & self.alive
        if bool(bad.any()):  # the step's one synchronisation with the device, as before batching
            self._drop(bad, loss, stage, step)
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        assert isinstance(optimizers, list) and isinstance(schedulers, list)
        optimizer, scheduler = optimizers[index], schedulers[index]
        assert isinstance(scheduler, LambdaLR)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(torch.where(self.alive, loss, torch.zeros_like(loss)).sum())
        for parameter in frozen:
            parameter.grad = None
        if self.failures:  # a photo was dropped (known on the host: no synchronisation)
            self._zero_dropped_gradients(optimizer)
        optimizer.step()
        scheduler.step()
        self._rng_at_step_start = None  # the step happened: a checkpoint from now on holds the RNG as it is

    def _drop(self, bad: Tensor, loss: Tensor, stage: str, step: int) -> None:
        """Stop inverting the photos ``bad`` selects (their loss is not finite), or stop the fit when
        none would be left."""
        for photo in bad.nonzero().flatten().tolist():
            self.failures[photo] = f"non-finite loss ({loss[photo].item()}) in stage '{stage}' at step {step}"
        if bool(bad.sum() >= self.alive.sum()):
            which = "" if self.photo_count == 1 else " of every photo left"
            raise FloatingPointError(
                f"non-finite loss{which} ({loss.detach().tolist()}) in stage '{stage}' at step {step}; "
                "the last checkpoint on disk is the last good state"
            )
        self.alive &= ~bad
        names = ", ".join(str(photo) for photo in bad.nonzero().flatten().tolist())
        rank_zero_warn(
            f"dropped photo(s) {names} of the batch: {self.failures[int(bad.nonzero()[0])]}; the others go on"
        )

    def _zero_dropped_gradients(self, optimizer: Any) -> None:
        """Dropped photos' gradients (possibly NaN) set to 0: their slices stay where they are, finite."""
        dead = ~self.alive
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None and parameter.shape[:1] == dead.shape:
                    parameter.grad[dead] = 0

    def _log(self, stage: str, losses: dict[str, Tensor]) -> None:
        """Each value's mean over the photos still being inverted (with one photo: its value); computed
        on the device, without the synchronisation a boolean index would cost."""
        alive, count = self.alive, self.alive.sum()
        values = {
            f"{stage}/{name}": torch.where(alive, value.detach(), 0).sum() / count for name, value in losses.items()
        }
        self.log_dict(values, on_step=True, prog_bar=False, batch_size=1)
        self.log("loss", values[f"{stage}/loss"], prog_bar=True, batch_size=1)

    # Entering a stage ----------------------------------------------------------------------

    def _status(self, message: str) -> None:
        """One line for the person at the console, printed above the progress bar."""
        if self._trainer is not None and self.trainer.progress_bar_callback is not None:
            self.print(message)

    def _keep_estimate(self) -> None:
        """``w_e``: the latent as stage 1 left it (the pseudo views' geometry)."""
        self.ws_estimate.copy_(self.ws().detach())

    def _enter_stage_of(self, step: int) -> None:
        """Enter the stage of step ``step`` unless it was entered: called between steps, so that the
        batch of its first step (assembled right before that step runs) holds what the stage needs."""
        stage, entered = self.stage_at(step), STAGES[int(self.stage_entered)]
        if stage == OCCLUDED and entered == ESTIMATE:
            self._enter_occluded()
        elif stage == PSEUDO_MULTIVIEW and entered != PSEUDO_MULTIVIEW:
            self._enter_pseudo_multiview(resumed=False)

    @torch.no_grad()
    def _enter_occluded(self) -> None:
        """Keep ``w_e`` and start ``w_o`` from it (the mask ``D`` is computed at the first step, from its batch)."""
        self._keep_estimate()
        self.occluded_latent.copy_(self.ws_estimate)
        self._targets = {}
        self.occluded_mask = self.occluded_mask.new_zeros(0)
        self.stage_entered.fill_(STAGES.index(OCCLUDED))

    def _enter_pseudo_multiview(self, resumed: bool) -> None:
        """Hand the stage-1 result to the DataModule, which builds the pseudo views (or takes them
        back from the checkpoint, on resume), then unfreeze G.

        The stage counts as entered only once the views are built, so a run interrupted during the
        build enters it again when it resumes."""
        if not resumed and STAGES[int(self.stage_entered)] == ESTIMATE:
            self._keep_estimate()  # no occluded stage: w_o stays w_e
            self.occluded_latent.data.copy_(self.ws_estimate)
        self._targets = {}
        if self.pseudo_multiview.use_pseudo_views:
            refined = self.camera.refined if self.refines_camera else None
            stage_one = StageOne(
                lambda: self._stage_one_generator(resumed), self.ws_estimate, self.ws_occluded, refined
            )
            views = self._data.prepare_pseudo_views(stage_one, report=self._status)
            if views is not None and self.uses_lpips:
                self._prepare_view_targets(views)
        self.stage_entered.fill_(STAGES.index(PSEUDO_MULTIVIEW))
        self.G.requires_grad_(True)
        self.G.eval()  # modulated kernels, not activations: see on_fit_start
        if self.pseudo_multiview.freeze_latent:
            self.latent.requires_grad_(False)

    @torch.no_grad()
    def _prepare_view_targets(self, views: PseudoViews, chunk: int = 4) -> None:
        """LPIPS features of every pre-built view's targets, computed once for the whole stage
        (steps pick theirs by the batch's ``aux_index``)."""
        kinds: dict[str, tuple[Tensor, Tensor | None]] = {"pseudo": (views.pseudo, None)}
        if self.pseudo_multiview.aux_target == "masked":
            kinds = {"occluded": (views.occluded, views.mask_occluded), "visible": (views.visible, views.mask_visible)}
        for kind, (images, masks) in kinds.items():
            parts = []
            for first in range(0, len(images), chunk):
                image = images[first : first + chunk].to(self.device)
                mask = None if masks is None else masks[first : first + chunk].to(self.device)
                parts.append(self.lpips.prepare(image, mask))
            self._targets[f"views/{kind}"] = LpipsTarget.cat(parts)

    def _stage_one_generator(self, resumed: bool) -> TriPlaneGenerator:
        """A frozen copy of G as stage 1 left it, for the pseudo views.

        Stages 1 and ``occluded`` never change G, so this is the pretrained generator, the same for
        every photo: a copy of ``G`` on entering stage 2, re-opened from its file when a run resumes
        in stage 2 (G is tuned by then).
        """
        if resumed:
            stage_one = open_generator(self.generator_source, self.seed).to(self.device)
        else:
            stage_one = self.G.generator(0)  # every photo's copy is still the pretrained one
        return stage_one.eval().requires_grad_(False)
