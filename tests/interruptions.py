"""Callbacks that interrupt a fit at a chosen step, as a kill or a signal from outside would."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class Killed(Exception):
    """Stands in for a run killed from outside."""


class StopAt(L.Callback):
    """Raises :class:`Killed` when step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Killed


class SignalAt(L.Callback):
    """Sends the process ``signum`` (SIGINT by default) when step ``step`` starts, in a run that was not
    resumed; with ``image_id``, only in the batch that holds that photo. Usable from a ``fit`` config
    (``class_path: tests.interruptions.SignalAt``)."""

    def __init__(self, step: int, signum: int = int(signal.SIGINT), image_id: str | None = None) -> None:
        self.step = step
        self.signum = signum
        self.image_id = image_id

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step or trainer.ckpt_path is not None:
            return
        if self.image_id is None or self.image_id in trainer.datamodule.image_ids:  # type: ignore[attr-defined]
            os.kill(os.getpid(), self.signum)
