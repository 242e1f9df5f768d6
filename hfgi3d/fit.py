"""``python -m hfgi3d fit``: one inversion, configured with LightningCLI (jsonargparse).

    python -m hfgi3d fit --config configs/hfgi3d.yaml --data.image face.png --data.camera face.json

Every hyperparameter is a config entry (``--print_config`` shows them all). Besides the
model (:class:`~hfgi3d.inversion.InversionModule`), data
(:class:`~hfgi3d.data.datamodule.PseudoViewDataModule`) and trainer groups there are three
callback groups, run in this order when the fit ends: ``outputs``
(:class:`~hfgi3d.outputs.InversionOutputs`, the result files), ``evaluation``
(:class:`~hfgi3d.callbacks.evaluation.Evaluation`, ``metrics.json`` and ``eval/*`` logs) and
``media`` (:class:`~hfgi3d.callbacks.wandb_logging.WandbMedia`, images/video/mesh to W&B when a
W&B logger is attached, e.g. ``--config configs/logger/wandb.yaml``). Two shortcuts:
``--output_dir`` (default ``outputs/<image name>``; checkpoints, logs and the offline W&B run go
inside) and ``--overwrite``. ``trainer.max_steps`` is always ``estimate_steps +
pseudo_multiview_steps``. The resolved config is saved as ``config.yaml`` and, with W&B, logged
as the run's config.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from hfgi3d.callbacks.evaluation import Evaluation
from hfgi3d.callbacks.wandb_logging import WandbMedia, wandb_loggers
from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.data.inputs import SAMPLE_IMAGE
from hfgi3d.inversion import InversionModule
from hfgi3d.outputs import InversionOutputs

CALLBACK_GROUPS = ("outputs", "evaluation", "media")
"""Config groups of the callbacks that write into the output folder, in the order they run."""


def _total_steps(estimate_steps: int, pseudo_multiview_steps: int) -> int:
    return estimate_steps + pseudo_multiview_steps


class LogConfig(SaveConfigCallback):
    """Save ``config.yaml`` (Lightning's behaviour) and send the resolved config to W&B runs."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in wandb_loggers(trainer):
            logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)


def _logger_entries(trainer_config: Any) -> list[Any]:
    """The ``class_path``/``init_args`` entries of ``trainer.logger`` (a list, one, or none)."""
    logger = trainer_config.get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if entry is not None and not isinstance(entry, bool)]


class InversionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(InversionOutputs, "outputs")
        parser.add_lightning_class_args(Evaluation, "evaluation")
        parser.add_lightning_class_args(WandbMedia, "media")
        parser.add_argument("--output_dir", type=str | None, default=None, help="results (default outputs/<image>)")
        parser.add_argument("--overwrite", type=bool, default=False, help="replace existing results")
        parser.link_arguments(
            ("model.estimate_steps", "model.pseudo_multiview_steps"), "trainer.max_steps", compute_fn=_total_steps
        )
        parser.link_arguments("overwrite", "outputs.overwrite")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        output_dir = config.get("output_dir") or config["outputs"].get("output_dir")
        if not output_dir:
            image = config["data"].get("image") or str(SAMPLE_IMAGE)
            output_dir = str(Path("outputs") / Path(image).stem)
        for group in CALLBACK_GROUPS:
            config[group]["output_dir"] = output_dir
        if config["trainer"].get("default_root_dir") in (None, "."):
            config["trainer"]["default_root_dir"] = output_dir
        image_id = Path(config["data"].get("image") or str(SAMPLE_IMAGE)).stem
        for entry in _logger_entries(config["trainer"]):
            init_args = entry.get("init_args")
            if init_args is not None and str(entry.get("class_path", "")).endswith("WandbLogger"):
                if init_args.get("save_dir") in (None, "."):
                    init_args["save_dir"] = output_dir
                if init_args.get("name") is None:
                    init_args["name"] = image_id


def main(args: Sequence[str]) -> int:
    """Run the LightningCLI with ``args`` (starting with the subcommand, e.g. ``fit``)."""
    # LightningCLI reads sys.argv; giving it both argv and `args` only earns a warning.
    with mock.patch.object(sys, "argv", ["python -m hfgi3d", *args]):
        cli = InversionCLI(
            InversionModule,
            PseudoViewDataModule,
            save_config_callback=LogConfig,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )
    trainer = getattr(cli, "trainer", None)
    for logger in wandb_loggers(trainer) if trainer is not None else []:
        if logger._experiment is not None:
            logger.experiment.finish()  # flush the run now (offline files complete), not at exit
    return 0
