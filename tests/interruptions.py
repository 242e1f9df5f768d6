"""Callbacks that interrupt a fit at a chosen step, as a kill or a signal from outside would."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch


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


def write_signal_config(path: Path, step: int, signum: int, image_id: str | None = None) -> Path:
    """A ``fit`` config (for ``--config``) that keeps a periodic checkpoint and sends ``signum`` when step
    ``step`` starts (:class:`SignalAt`), long before the first periodic checkpoint (step 50)."""
    photo = "" if image_id is None else f", image_id: {image_id}"
    path.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {every_n_train_steps: 50, save_last: true}\n"
        "    - class_path: tests.interruptions.SignalAt\n"
        f"      init_args: {{step: {step}, signum: {int(signum)}{photo}}}\n"
    )
    return path


class Resume(NamedTuple):
    """What an interrupted ``fit`` left: the arguments of its printed command (after ``python -m hfgi3d``),
    the checkpoint it names and the seconds the first segment ran."""

    args: list[str]
    checkpoint: Path
    first_segment: float


def printed_resume(err: str) -> Resume:
    """The ``resume with:`` command an interrupted ``fit`` printed on stderr, checked: it runs
    ``python -m hfgi3d`` on a checkpoint that exists and that the message names."""
    line = next(line for line in err.splitlines() if line.startswith("resume with: "))
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[:3] == ["python", "-m", "hfgi3d"]
    checkpoint = Path(command[command.index("--ckpt_path") + 1])
    assert checkpoint.is_file() and f"the run is saved in {checkpoint}" in err
    states = torch.load(checkpoint, weights_only=False)["callbacks"].values()
    return Resume(command[3:], checkpoint, next(state["seconds"] for state in states if "seconds" in state))


def assert_resumed_like_uninterrupted(resumed: Path, whole: Path, first_segment: float) -> None:
    """The resumed run's result folder holds the uninterrupted run's latents (bit for bit) and metrics,
    and its time counts both segments."""
    for key in ("ws", "ws_occluded"):
        torch.testing.assert_close(
            torch.load(resumed / "latent.pt", weights_only=True)[key],
            torch.load(whole / "latent.pt", weights_only=True)[key],
            rtol=0,
            atol=0,
        )
    metrics_whole = json.loads((whole / "metrics.json").read_text())
    metrics_resumed = json.loads((resumed / "metrics.json").read_text())
    for key in ("psnr", "ssim", "lpips_vgg", "warp_psnr", "steps"):
        assert metrics_resumed[key] == metrics_whole[key], key
    assert 0 < first_segment < metrics_resumed["seconds"]  # both segments count
