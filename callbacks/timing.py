"""Per-step wall time, logged as ``{stage}/step_time_s``."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from .protocols import inversion_of


class StepTimer(L.Callback):
    """Log how long each training step takes, under the name of the stage it belongs to.

    The time runs from the batch's start to its end, so it includes everything the step does
    (the stage-2 hand-over falls into the first step of ``pseudo_multiview``). The module must
    have ``stage_at(step) -> str``, as :class:`hfgi3d.inversion.InversionModule` does.
    """

    def __init__(self) -> None:
        self._started = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stage = inversion_of(pl_module).stage_at(trainer.global_step - 1)  # global_step already counts this step
        elapsed = time.perf_counter() - self._started
        pl_module.log(f"{stage}/step_time_s", elapsed, on_step=True, on_epoch=False, batch_size=1)
