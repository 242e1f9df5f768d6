"""``python -m hfgi3d fit``: one inversion, configured with LightningCLI (jsonargparse).

    python -m hfgi3d fit --config configs/hfgi3d.yaml --data.image face.png --data.camera face.json

Every hyperparameter is a config entry (``--print_config`` shows them all). Besides the
model (:class:`~hfgi3d.inversion.InversionModule`), data
(:class:`~hfgi3d.data.datamodule.PseudoViewDataModule`) and trainer groups there are three
callback groups, run in this order when the fit ends: ``outputs``
(:class:`~hfgi3d.callbacks.outputs.InversionOutputs`, the result files), ``evaluation``
(:class:`~hfgi3d.callbacks.evaluation.Evaluation`, ``metrics.json`` and ``eval/*`` logs) and
``media`` (:class:`~hfgi3d.callbacks.wandb_logging.WandbMedia`, images/video/mesh to W&B when a
W&B logger is attached, e.g. ``--config configs/logger/wandb.yaml``). Two shortcuts:
``--output_dir`` (default ``outputs/<image name>``; checkpoints, logs and the offline W&B run go
inside) and ``--overwrite``.

Values typed once, used by several groups (``link_arguments``): ``trainer.max_steps`` is
``estimate_steps + pseudo_multiview_steps``; the evaluation uses the model's LPIPS size and VGG
weights, and the pseudo views' yaw/pitch ranges and visibility test (so do the output grid and
orbit). The resolved config is saved as ``config.yaml`` and, with W&B, logged as the run's config.
Every fit also logs ``{stage}/lr`` (``LearningRateMonitor``) and ``{stage}/step_time_s``
(:class:`~hfgi3d.callbacks.timing.StepTimer`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from hfgi3d.callbacks.evaluation import Evaluation
from hfgi3d.callbacks.outputs import InversionOutputs
from hfgi3d.callbacks.timing import StepTimer
from hfgi3d.callbacks.wandb_logging import WandbMedia, wandb_loggers
from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.data.inputs import resolve_input
from hfgi3d.inversion import InversionModule
from hfgi3d.presets import LINKS

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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # `args` are the command line (python -m hfgi3d passes sys.argv[1:]) or a benchmark's or
            # a test's arguments; LightningCLI warns whenever sys.argv is not empty as well.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().__init__(*args, **kwargs)

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
        for source, target in LINKS:
            parser.link_arguments(source, target)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        image, _ = resolve_input(config["data"]["image"], None)
        output_dir = config.get("output_dir") or config["outputs"].get("output_dir")
        if not output_dir:
            output_dir = str(Path("outputs") / image.stem)
        for group in CALLBACK_GROUPS:
            config[group]["output_dir"] = output_dir
        if config["trainer"].get("default_root_dir") in (None, "."):
            config["trainer"]["default_root_dir"] = output_dir
        image_id = image.stem
        for entry in _logger_entries(config["trainer"]):
            init_args = entry.get("init_args")
            if init_args is not None and str(entry.get("class_path", "")).endswith("WandbLogger"):
                if init_args.get("save_dir") in (None, "."):
                    init_args["save_dir"] = output_dir
                if init_args.get("name") is None:
                    init_args["name"] = image_id


def main(args: Sequence[str]) -> int:
    """Run the LightningCLI with ``args`` (starting with the subcommand, e.g. ``fit``)."""
    cli = InversionCLI(
        InversionModule,
        PseudoViewDataModule,
        save_config_callback=LogConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [LearningRateMonitor(logging_interval="step"), StepTimer()]},
        seed_everything_default=0,
        args=list(args),
    )
    trainer = getattr(cli, "trainer", None)
    for logger in wandb_loggers(trainer) if trainer is not None else []:
        if logger._experiment is not None:
            logger.experiment.finish()  # flush the run now (offline files complete), not at exit
    return 0
