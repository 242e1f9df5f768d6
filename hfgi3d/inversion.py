"""Pseudo-multi-view inversion of one photo (docs/method.md §4–§6) as a LightningModule.

Two scheduled stages, with manual optimization:

* ``estimate`` (steps ``[0, estimate_steps)``): G frozen; the latent (``w`` or ``W+``) starts
  at ``w_avg`` and is fitted to the input view with LPIPS + L2. The result is ``w_e``.
* hand-over (once, before the first stage-2 step): ``w_o`` is fitted to the in-distribution
  part of the input (``D = ‖x − G(w_e, p0)‖₂ ≤ θ``) and the DataModule builds the pseudo views
  from ``w_e`` and ``w_o``.
* ``pseudo_multiview`` (the next ``pseudo_multiview_steps`` steps): G unfrozen (PTI-style),
  latent optionally frozen; each step adds the loss of one auxiliary view to the input-view
  loss. ``aux_target`` picks what the auxiliary render is compared with: ``masked`` (the
  paper's Eq. 5: ``O_i`` where ``M_o`` plus ``V_i`` where ``M_v``) or ``blended`` (the blended
  pseudo view ``v_i``, no masks, as the authors' release trains). ``use_pseudo_views=False``
  gives the PTI baseline.

Log keys are slash-namespaced by stage (``estimate/loss_lpips``, ``pseudo_multiview/loss_visible``);
the ``fit`` command adds ``{stage}/lr`` (Lightning's ``LearningRateMonitor``, reading each stage's
``LambdaLR``) and ``{stage}/step_time_s`` (:class:`hfgi3d.callbacks.timing.StepTimer`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from hfgi3d.cameras import frontal_c25
from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.generator import TriPlaneGenerator, open_generator
from hfgi3d.geometry import difference_mask
from hfgi3d.losses import LPIPS, reconstruction_loss

ESTIMATE = "estimate"
PSEUDO_MULTIVIEW = "pseudo_multiview"


AuxTarget = Literal["masked", "blended"]
RNG_KEY = "hfgi3d_rng_state"
"""Checkpoint entry with the global RNG state (CPU and CUDA) of the step to run next."""


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    """Invert one photo into EG3D with pseudo-multi-view optimization.

    The values of the paper and of the authors' release live in ``configs/hfgi3d.yaml`` and
    ``configs/hfgi3d_official.yaml``; every argument is a config entry (``model.*``).

    Args:
        generator: EG3D ``.pkl``, hfgi3d ``.pt``, GeneratorConfig ``.yaml`` or ``tiny`` (the small
            random generator of ``configs/demo.yaml``).
        latent_space: ``w`` (one 512-d vector) or ``w+`` (one per layer).
        w_avg_samples: samples for the starting latent and its spread (frontal camera).
        estimate_steps, estimate_lr: stage-1 length and peak learning rate.
        estimate_lr_rampup, estimate_lr_rampdown: fractions of stage 1 for the lr ramps.
        estimate_noise, estimate_noise_ramp: latent noise ``w_std·noise`` decaying to 0 over
            that fraction of stage 1 (quadratically, as the PTI projector).
        occluded_steps, occluded_lr: optimization of ``w_o`` (G frozen, from ``w_e``).
        difference_threshold: θ of the in-distribution mask, per-pixel RGB L2 in [-1, 1] units.
        pseudo_multiview_steps, pseudo_multiview_lr: stage-2 length and Adam learning rate.
        freeze_latent: keep the latent fixed in stage 2 (the authors' release).
        use_pseudo_views: False gives the PTI baseline (input view only).
        aux_target: ``masked`` (Eq. 5: ``O_i`` on ``M_o`` and ``V_i`` on ``M_v``) or
            ``blended`` (``v_i``, unmasked).
        lambda_l2, lambda_lpips: weights of ``L_rec``'s terms.
        lambda_occluded, lambda_visible: weights of the two masked auxiliary terms.
        lambda_pseudo: weight of the blended auxiliary term.
        lpips_resize: LPIPS input size (the projectors use 256); None keeps the render size.
        seed: generator init (random architectures) and latent sampling.
        lpips_weights: explicit LPIPS weights file (see :mod:`hfgi3d.losses`); None searches.
        neural_rendering_resolution: override of the generator's (None keeps it).
    """

    w_std: Tensor
    ws_estimate: Tensor
    ws_occluded: Tensor
    latent_ready: Tensor
    handed_over: Tensor

    def __init__(
        self,
        generator: str,
        latent_space: Literal["w", "w+"],
        w_avg_samples: int,
        estimate_steps: int,
        estimate_lr: float,
        estimate_lr_rampup: float,
        estimate_lr_rampdown: float,
        estimate_noise: float,
        estimate_noise_ramp: float,
        occluded_steps: int,
        occluded_lr: float,
        difference_threshold: float,
        pseudo_multiview_steps: int,
        pseudo_multiview_lr: float,
        freeze_latent: bool,
        use_pseudo_views: bool,
        aux_target: AuxTarget,
        lambda_l2: float,
        lambda_lpips: float,
        lambda_occluded: float,
        lambda_visible: float,
        lambda_pseudo: float,
        lpips_resize: int | None,
        seed: int,
        lpips_weights: str | None = None,
        neural_rendering_resolution: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.G = open_generator(generator, seed)
        self.G.requires_grad_(False)
        # Held in a tuple so that the frozen VGG16 is not a submodule: it stays out of
        # checkpoints (its weights come from the LPIPS sources) and is moved in on_fit_start.
        self._lpips = (LPIPS(resize_to=lpips_resize, weights=lpips_weights),)
        num_ws = 1 if latent_space == "w" else self.G.num_ws
        self.latent = nn.Parameter(torch.zeros(1, num_ws, self.G.config.w_dim))
        self.register_buffer("w_std", torch.zeros(()))
        # w_e and w_o are kept (and checkpointed) so that a resumed run builds views from them.
        self.register_buffer("ws_estimate", torch.zeros(1, self.G.num_ws, self.G.config.w_dim))
        self.register_buffer("ws_occluded", torch.zeros(1, self.G.num_ws, self.G.config.w_dim))
        # Stage flags live in buffers so they are restored with the weights, before
        # on_fit_start (Lightning restores global_step only afterwards).
        self.register_buffer("latent_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("handed_over", torch.zeros((), dtype=torch.bool))
        self._rng_at_step_start: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    # Helpers ------------------------------------------------------------------------------

    @property
    def hp(self) -> Any:
        """The constructor arguments (``self.hparams``, typed loosely for attribute access)."""
        return self.hparams

    @property
    def datamodule(self) -> PseudoViewDataModule:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, PseudoViewDataModule):
            raise TypeError("InversionModule needs a PseudoViewDataModule")
        return datamodule

    @property
    def total_steps(self) -> int:
        return self.hp.estimate_steps + self.hp.pseudo_multiview_steps

    def stage_spans(self) -> list[tuple[str, int, int]]:
        """``(stage, first step, end step)`` of each stage, in order."""
        estimate_end = self.hp.estimate_steps
        return [(ESTIMATE, 0, estimate_end), (PSEUDO_MULTIVIEW, estimate_end, self.total_steps)]

    def stage_at(self, step: int) -> str:
        return ESTIMATE if step < self.hp.estimate_steps else PSEUDO_MULTIVIEW

    def ws(self) -> Tensor:
        """The current latent broadcast to ``1×num_ws×w_dim``."""
        return self.latent.expand(-1, self.G.num_ws, -1)

    def render(self, ws: Tensor, c25: Tensor) -> dict[str, Tensor]:
        return self.G.synthesis(ws, c25, neural_rendering_resolution=self.hp.neural_rendering_resolution)

    @property
    def lpips(self) -> LPIPS:
        return self._lpips[0]

    def _rec(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        return reconstruction_loss(
            pred, target, mask, self.lpips, lambda_l2=self.hp.lambda_l2, lambda_lpips=self.hp.lambda_lpips
        )

    # Lightning hooks ----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        self.datamodule.load_input(self.G.config.img_resolution)

    def on_fit_start(self) -> None:
        max_steps = self.trainer.max_steps
        if max_steps != self.total_steps:
            raise ValueError(
                f"trainer.max_steps is {max_steps} but the two stages take {self.total_steps} steps "
                "(estimate_steps + pseudo_multiview_steps); `python -m hfgi3d fit` sets it for you"
            )
        self.lpips.to(self.device)
        if not bool(self.latent_ready):
            self._init_latent()
        if bool(self.handed_over):
            self._enter_stage_two(resumed=True)

    @torch.no_grad()
    def _init_latent(self) -> None:
        """``latent = w_avg`` of ``w_avg_samples`` mappings under the frontal camera."""
        generator = torch.Generator(device="cpu").manual_seed(self.hp.seed)
        z = torch.randn(self.hp.w_avg_samples, self.G.config.z_dim, generator=generator).to(self.device)
        c = frontal_c25().to(self.device).expand(len(z), -1)
        w = self.G.mapping(z, c)[:, 0]  # S×w_dim
        w_avg = w.mean(0)
        self.w_std.copy_(((w - w_avg).square().sum() / len(w)).sqrt())
        self.latent.copy_(w_avg.expand_as(self.latent))
        self.latent_ready.fill_(True)

    def configure_optimizers(self) -> Any:
        """One Adam per stage, each with a ``LambdaLR`` stepped once per step of its stage."""
        hp = self.hp
        latent_opt = torch.optim.Adam([self.latent], lr=hp.estimate_lr, betas=(0.9, 0.999))
        params = list(self.G.parameters()) + ([] if hp.freeze_latent else [self.latent])
        tune_opt = torch.optim.Adam(params, lr=hp.pseudo_multiview_lr)

        def estimate_factor(step: int) -> float:
            return lr_factor(step, hp.estimate_steps, hp.estimate_lr_rampup, hp.estimate_lr_rampdown)

        schedulers = [
            {"scheduler": LambdaLR(latent_opt, estimate_factor), "name": f"{ESTIMATE}/lr", "interval": "step"},
            {"scheduler": LambdaLR(tune_opt, lambda step: 1.0), "name": f"{PSEUDO_MULTIVIEW}/lr", "interval": "step"},
        ]
        return [latent_opt, tune_opt], schedulers

    # Resuming gives the run an uninterrupted one would have: the global RNG (ray jitter, latent
    # noise) is saved as it was when the step in progress began, and restored before training.

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._rng_at_step_start = _rng_state()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._rng_at_step_start = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # An interrupted step did not happen: the resumed run repeats it from the same RNG state.
        checkpoint[RNG_KEY] = self._rng_at_step_start or _rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def on_train_start(self) -> None:
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self.global_step  # manual optimization: counts optimizer steps
        if self.stage_at(step) == ESTIMATE:
            return self._estimate_step(batch, step)
        if not bool(self.handed_over):
            self._hand_over()
            # This step's batch was assembled before the pseudo views existed: draw again.
            batch = self.datamodule.assemble(step, self.device)
        return self._pseudo_multiview_step(batch, step)

    def _estimate_step(self, batch: dict[str, Tensor], step: int) -> Tensor:
        hp = self.hp
        ws = self.ws()
        if hp.estimate_noise > 0:
            fade = max(0.0, 1.0 - step / (hp.estimate_noise_ramp * hp.estimate_steps))
            ws = ws + torch.randn_like(ws) * self.w_std * hp.estimate_noise * fade**2
        losses = self._rec(self.render(ws, batch["c25"])["image"], batch["image"])
        self._optimize(0, losses["loss"], ESTIMATE, step)
        self._log(ESTIMATE, losses)
        return losses["loss"]

    def _pseudo_multiview_step(self, batch: dict[str, Tensor], step: int) -> Tensor:
        ws = self.ws()
        input_losses = self._rec(self.render(ws, batch["c25"])["image"], batch["image"])
        losses = {name.replace("loss", "loss_input", 1): value for name, value in input_losses.items()}
        loss = losses["loss_input"]
        if self.hp.use_pseudo_views:
            aux_loss, aux_losses = self.auxiliary_loss(self.render(ws, batch["aux_c25"])["image"], batch)
            losses.update(aux_losses)
            loss = loss + aux_loss
        losses["loss"] = loss
        self._optimize(1, loss, PSEUDO_MULTIVIEW, step)
        self._log(PSEUDO_MULTIVIEW, losses)
        return loss

    def auxiliary_loss(self, render: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The auxiliary view's weighted loss and its unweighted terms (see ``aux_target``).

        ``masked``: ``λ_o·L_rec(M_o·G(w, p_i), M_o·O_i) + λ_v·L_rec(M_v·G(w, p_i), M_v·V_i)``;
        ``blended``: ``λ_p·L_rec(G(w, p_i), v_i)``.
        """
        hp = self.hp
        if hp.aux_target == "masked":
            occluded = self._rec(render, batch["aux_occluded"], batch["aux_mask_occluded"])["loss"]
            visible = self._rec(render, batch["aux_visible"], batch["aux_mask_visible"])["loss"]
            total = hp.lambda_occluded * occluded + hp.lambda_visible * visible
            return total, {"loss_occluded": occluded, "loss_visible": visible}
        if hp.aux_target == "blended":
            pseudo = self._rec(render, batch["aux_pseudo"])["loss"]
            return hp.lambda_pseudo * pseudo, {"loss_pseudo": pseudo}
        raise ValueError(f"aux_target must be 'masked' or 'blended', got {hp.aux_target!r}")

    def _optimize(self, index: int, loss: Tensor, stage: str, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) in stage '{stage}' at step {step}; "
                "the last checkpoint on disk is the last good state"
            )
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        assert isinstance(optimizers, list) and isinstance(schedulers, list)
        optimizer, scheduler = optimizers[index], schedulers[index]
        assert isinstance(scheduler, LambdaLR)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        scheduler.step()

    def _log(self, stage: str, losses: dict[str, Tensor]) -> None:
        values = {f"{stage}/{name}": value.detach() for name, value in losses.items()}
        self.log_dict(values, on_step=True, prog_bar=False, batch_size=1)
        self.log("loss", losses["loss"].detach(), prog_bar=True, batch_size=1)

    # Stage 1 → stage 2 ----------------------------------------------------------------------

    def _status(self, message: str) -> None:
        """One line for the person at the console, printed above the progress bar."""
        if self._trainer is not None and self.trainer.progress_bar_callback is not None:
            self.print(message)

    def _hand_over(self) -> None:
        """Keep ``w_e``, fit ``w_o``, then enter stage 2 (runs once)."""
        self.ws_estimate.copy_(self.ws().detach())
        # The no_occluded ablation fills occluded regions from the photo: it needs no w_o.
        if self.hp.use_pseudo_views and self.datamodule.config.occluded_source == "generated":
            self._status(f"hand-over: fitting the occluded latent w_o ({self.hp.occluded_steps} steps)")
            started = time.perf_counter()
            self.ws_occluded.copy_(self._fit_occluded_latent(self.ws_estimate))
            self._status(f"hand-over: w_o fitted in {time.perf_counter() - started:.1f} s")
        self.handed_over.fill_(True)
        self._enter_stage_two(resumed=False)

    def _enter_stage_two(self, resumed: bool) -> None:
        """Unfreeze G and make the pseudo views available (at the hand-over, or on resume)."""
        if self.hp.use_pseudo_views and not self.datamodule.ready:
            stage_one = self._stage_one_generator(resumed)
            started = time.perf_counter()
            if self.datamodule.mode == "prebuilt":
                self._status(f"hand-over: building {self.datamodule.num_views} pseudo views")
            self.datamodule.prepare_pseudo_views(stage_one, self.ws_estimate, self.ws_occluded)
            if self.datamodule.mode == "prebuilt":
                self._status(f"hand-over: pseudo views built in {time.perf_counter() - started:.1f} s")
        self.G.requires_grad_(True)
        self.G.train()
        if self.hp.freeze_latent:
            self.latent.requires_grad_(False)

    def _stage_one_generator(self, resumed: bool) -> TriPlaneGenerator:
        """A frozen copy of G as stage 1 left it, for the pseudo views.

        Stage 1 never changes G, so this is the pretrained generator: a copy of ``G`` at the
        hand-over, re-opened from its file when a run resumes in stage 2 (G is tuned by then).
        """
        if resumed:
            stage_one = open_generator(self.hp.generator, self.hp.seed).to(self.device)
        else:
            stage_one = copy.deepcopy(self.G)
        return stage_one.eval().requires_grad_(False)

    @torch.enable_grad()
    def _fit_occluded_latent(self, ws_estimate: Tensor) -> Tensor:
        """``w_o``: from ``w_e``, fit ``G(w, p0)·D`` to ``x·D`` with G frozen (docs/method.md, pseudo views)."""
        assert self.datamodule.image is not None and self.datamodule.c25 is not None
        image, c25 = self.datamodule.image.to(self.device), self.datamodule.c25.to(self.device)
        with torch.no_grad():
            rendered = self.render(ws_estimate, c25)["image"]
        mask = difference_mask(image, rendered, self.hp.difference_threshold)
        ws = ws_estimate.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([ws], lr=self.hp.occluded_lr)
        for _ in range(self.hp.occluded_steps):
            loss = self._rec(self.render(ws, c25)["image"] * mask, image * mask)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return ws.detach()
