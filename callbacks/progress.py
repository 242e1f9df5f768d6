"""The console of a fit: one progress bar per stage, and a resumable checkpoint when interrupted."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hfgi3d.validation import INTERRUPTED_CHECKPOINT

from .protocols import inversion_of


class StageProgressBar(TQDMProgressBar):
    """A bar per stage with its own step count: ``estimate 37/1000``, then ``pseudo_multiview 12/3000``.

    The module must have ``stage_spans() -> [(name, first_step, end_step), …]``, as
    :class:`hfgi3d.inversion.InversionModule` does. A resumed run starts its bar where the stage
    stopped, and the rate counts only the steps of this run.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._stage: str | None = None
        self._first_step = 0

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._stage = None
        self._show(trainer, trainer.lightning_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._show(trainer, pl_module)

    @property
    def train_description(self) -> str:
        return self._stage or "fit"

    def init_train_tqdm(self) -> Tqdm:
        """Lightning's training bar, first drawn at the first step of its stage (``delay``): a new bar
        would otherwise add a line with no count to a log file (at creation) and another when
        :meth:`_show` sets its total."""
        return Tqdm(
            desc=self.train_description,
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
            delay=1e-9,
        )

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """A line above the bar; before its stage's first step, when the bar is not drawn yet, a plain
        line (tqdm would draw the empty bar again under it)."""
        bar = self._train_progress_bar
        if bar is not None and not bar.disable and bar.n == 0:
            print(sep.join(map(str, args)), file=sys.stdout, flush=True)
            return
        super().print(*args, sep=sep, **kwargs)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number says nothing about the fit
        return metrics

    def _show(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        step = trainer.global_step
        spans = inversion_of(module).stage_spans()
        name, first, end = next(((n, f, e) for n, f, e in spans if step < e), spans[-1])
        if name != self._stage:
            finished, self._stage = self._stage, name
            if finished is not None:  # the finished stage keeps its line, complete
                bar.n = bar.total
                bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
                bar.close()
                bar = self.train_progress_bar = self.init_train_tqdm()  # named after the new stage
            bar.set_description(name, refresh=False)
            bar.total = end - first  # set, not reset(): reset() would draw the bar once more
            bar.initial = step - first  # steps done before this run (a resume) do not count in the rate
        bar.n = step - first
        bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
        if step >= spans[-1][2]:
            bar.close()  # drawn once more, complete, before what the outputs print after the last step
        elif bar.n > 0:
            bar.refresh()  # once per step (none before a stage's first): in a log file every refresh is a line


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Write a resumable checkpoint when the fit is interrupted by Ctrl-C (SIGINT) or SIGTERM.

    Lightning's ``OnExceptionCheckpoint``, restricted to interruptions: a run that failed (a
    non-finite loss, a bug) keeps its last good periodic checkpoint instead. ``signal`` and
    ``step`` say what happened; the ``fit`` command prints where the file is and how to resume.
    The file is removed when a run (the resumed one) finishes.
    """

    def __init__(self, dirpath: str = "checkpoints") -> None:
        super().__init__(dirpath=dirpath, filename=INTERRUPTED_CHECKPOINT.stem)
        self.signal: str | None = None
        self.step = 0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.signal = "SIGINT"
        elif isinstance(exception, SIGTERMException):
            self.signal = "SIGTERM"
        else:
            return
        self.step = trainer.global_step
        super().on_exception(trainer)
