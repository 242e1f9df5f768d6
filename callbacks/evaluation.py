"""The evaluation callback: input-view metrics during the fit, the paper's evaluation at its end.

During the fit (every ``every_n_steps`` steps and at the last step of each stage) it logs the
input-view ``{stage}/psnr``, ``{stage}/ssim`` and ``{stage}/lpips`` (AlexNet) of the current
latent and generator. When the fit ends it runs :func:`hfgi3d.metrics.evaluation.evaluate`,
writes ``metrics.json`` to the output folder and logs every number as ``eval/<metric>`` to each
attached logger (CSV, TensorBoard, W&B, …). With a W&B logger it also puts them in the run
summary and logs a ``wandb.Table`` (``eval/table``: image id, every metric, runtime, peak GPU
memory) so a benchmark group can be sorted and filtered as one table.

A batch of photos gets one ``metrics.json`` per photo folder and one table row per photo; the
logged ``{stage}/psnr|ssim|lpips`` and ``eval/<metric>`` are then means over the batch's photos,
and ``seconds`` is the batch's time (shared by its photos). A dropped photo has no metrics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from hfgi3d.io import write_json_atomic
from hfgi3d.metrics.evaluation import (
    METRIC_KEYS,
    EvaluationConfig,
    EvaluationNetworks,
    evaluate,
    load_networks,
)
from hfgi3d.metrics.fidelity import psnr, ssim
from hfgi3d.metrics.registry import RUN_KEYS, families
from hfgi3d.run_folder import METRICS

from .protocols import Inversion, inversion_of, photos_of

TABLE_COLUMNS = ("image_id", *METRIC_KEYS, *RUN_KEYS)
_MIB = 2**20


def curve_step(module: Inversion, step: int, every_n_steps: int) -> bool:
    """Whether curves are logged after ``step`` steps of an :class:`~hfgi3d.inversion.InversionModule`
    fit: every ``every_n_steps`` steps (0: never) and at the last step of each stage."""
    if every_n_steps > 0 and step % every_n_steps == 0:
        return True
    return step in {end for _, _, end in module.stage_spans()}


@torch.no_grad()
def current_renders(module: Inversion, cameras: Tensor) -> Tensor:
    """Each photo's current latent and generator from its cameras (``N×K×25``), without ray jitter and
    with G in eval mode (its mode is restored): images ``N×K×3×H×W`` in ``[-1, 1]``."""
    was_training = module.G.training
    module.G.eval()
    try:
        return module.G.synthesis(module.ws(), cameras, deterministic=True)["image"].clamp(-1, 1)
    finally:
        module.G.train(was_training)


class Evaluation(L.Callback):
    """Evaluate an :class:`~hfgi3d.inversion.InversionModule` fit (docs/method.md §9); see the module docstring.

    Args:
        every_n_steps: input-view metrics during the fit every so many steps (0: only at stage ends).
        metrics: what the final evaluation computes (:class:`hfgi3d.metrics.evaluation.EvaluationConfig`,
            the ``evaluation.metrics.*`` config entries).
        output_dir: where ``metrics.json`` goes; ``None`` lets the ``fit`` command use the run's folder.
    """

    def __init__(self, every_n_steps: int, metrics: EvaluationConfig, output_dir: str | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps = every_n_steps
        self.config = metrics
        self._networks: EvaluationNetworks | None = None
        self._started = 0.0
        self._seconds_before = 0.0  # fit time of the segments before a resume
        self.metrics: dict[str, Any] | None = None
        """The last evaluation's ``metrics.json`` content (``None`` before the fit ends, and for batches)."""
        self.rows: list[dict[str, Any]] = []
        """Every evaluated photo's ``metrics.json`` content, in batch order."""

    # Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.output_dir is None:
            raise ValueError("Evaluation needs an output_dir")
        if self._networks is None:
            # Loaded before the fit so that a wrong file fails in seconds, not after the inversion.
            self._networks = load_networks(self.config)
            if self._networks.skipped:
                rank_zero_info(f"note: the evaluation will skip {_grouped(self._networks.skipped)}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        module = inversion_of(pl_module)
        step = trainer.global_step  # steps done, this one included
        if not curve_step(module, step, self.every_n_steps):
            return
        stage = module.stage_at(step - 1)
        assert self._networks is not None
        image, c25 = batch["image"], module.input_camera(batch["c25"])  # as being refined, in stage 1
        pred = current_renders(module, c25[:, None])[:, 0]
        lpips = self._networks.lpips_alex.to(module.device)
        alive = module.alive
        values = {
            f"{stage}/psnr": float(psnr(pred, image)[alive].mean()),
            f"{stage}/ssim": float(ssim(pred, image)[alive].mean()),
            f"{stage}/lpips": float(lpips(pred, image)[alive].mean()),
        }
        # Straight to the loggers: `self.log` would repeat these values at every later step.
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def state_dict(self) -> dict[str, Any]:
        """The fit time so far, so that ``seconds`` covers every segment of a resumed run."""
        return {"seconds": self._seconds_before + time.perf_counter() - self._started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._seconds_before = float(state_dict["seconds"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self._seconds_before + time.perf_counter() - self._started
        if not trainer.is_global_zero:
            return
        assert self._networks is not None and self.output_dir is not None
        module = inversion_of(pl_module)
        datamodule = photos_of(trainer)
        assert datamodule.image is not None and datamodule.c25 is not None  # set when the fit started
        device = module.device
        networks = self._networks.to(device)
        module.G.eval()
        module.finish_weights()  # the weights as the results are saved (InversionOutputs sets their precision)
        rows = []
        for photo, folder in enumerate(datamodule.photo_folders(self.output_dir)):
            if not bool(module.alive[photo]):
                continue
            image_id = datamodule.image_ids[photo]
            rank_zero_info(f"evaluating {image_id}: {', '.join(self._planned())}")
            started = time.perf_counter()
            metrics, skipped = evaluate(
                module.photo_generator(photo).eval(),
                module.ws().detach()[photo : photo + 1],
                datamodule.image[photo : photo + 1].to(device),
                module.input_camera(datamodule.c25)[photo : photo + 1],
                networks,
                self.config,
            )
            run = {
                "seconds": seconds,
                "eval_seconds": time.perf_counter() - started,
                "steps": trainer.global_step,
                "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / _MIB if device.type == "cuda" else None,
            }
            row = {"image_id": image_id, **metrics, **run, "skipped": skipped}
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / METRICS, row)
            rows.append(row)
            shown = ", ".join(f"{key} {value:.4g}" for key, value in metrics.items() if value is not None)
            rank_zero_info(f"evaluation of {image_id}: {shown} (metrics.json in {folder})")
        self.rows = rows
        self.metrics = rows[0] if len(rows) == 1 else None
        if rows:
            self._log(trainer, rows)

    def _planned(self) -> list[str]:
        """The metric families this evaluation computes (for the status line)."""
        assert self._networks is not None
        skipped = self._networks.skipped
        return [family for family, keys in families().items() if any(key not in skipped for key in keys)]

    # Logging ------------------------------------------------------------------------------

    def _log(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> None:
        """``eval/<key>``: each number's mean over the photos that have it (one photo: its value)."""
        found: dict[str, list[float]] = {}
        for row in rows:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    found.setdefault(f"eval/{key}", []).append(float(value))
        numbers = {key: sum(values) / len(values) for key, values in found.items()}
        for logger in trainer.loggers:
            logger.log_metrics(numbers, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                _log_wandb_table(logger, rows, numbers)
            logger.save()


def _log_wandb_table(logger: WandbLogger, rows: list[dict[str, Any]], numbers: dict[str, float]) -> None:
    """One ``wandb.Table`` row per image, and the (mean) numbers in the run summary."""
    import wandb  # the logger exists, so wandb is installed

    data = [[row.get(column) for column in TABLE_COLUMNS] for row in rows]
    table = wandb.Table(columns=list(TABLE_COLUMNS), data=data)
    logger.experiment.log({"eval/table": table})
    logger.experiment.summary.update(numbers)


def _grouped(skipped: dict[str, str]) -> str:
    """``"a, b (reason 1); c (reason 2)"``: one notice however many metrics share a reason."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    return "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in by_reason.items())
