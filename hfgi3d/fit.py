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

Values typed once, used by several groups (``link_arguments``): ``trainer.max_steps`` is the
stages' steps (estimate + occluded + pseudo_multiview); the evaluation uses the model's LPIPS size and VGG
weights, and the pseudo views' yaw/pitch ranges and visibility test (so do the output grid and
orbit). The config as given is saved as ``config.yaml`` in the output folder (``edit-texture``
reruns stage 2 from it), the resolved one in the log folder and, with W&B, as the run's config.
Every fit also logs ``{stage}/lr`` (``LearningRateMonitor``) and ``{stage}/step_time_s``
(:class:`~hfgi3d.callbacks.timing.StepTimer`).
"""

from __future__ import annotations

import logging
import re
import shlex
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionYesNo, ArgumentParser, DefaultHelpFormatter
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hfgi3d import run_folder
from hfgi3d.callbacks.evaluation import Evaluation
from hfgi3d.callbacks.outputs import InversionOutputs
from hfgi3d.callbacks.progress import InterruptCheckpoint, StageProgressBar
from hfgi3d.callbacks.timing import StepTimer
from hfgi3d.callbacks.wandb_logging import WandbMedia, wandb_loggers
from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.data.inputs import read_photo, resolve_input
from hfgi3d.errors import InputError
from hfgi3d.inversion import InversionModule
from hfgi3d.presets import LINKS
from hfgi3d.stages import total_steps
from hfgi3d.validation import (
    INTERRUPTED_CHECKPOINT,
    FitInputs,
    batch_folder,
    batch_ids,
    check_fit_inputs,
    fit_inputs_from_argv,
    only_describes,
    output_dir_for,
)

CALLBACK_GROUPS = ("outputs", "evaluation", "media")
"""Config groups of the callbacks that write into the output folder, in the order they run."""
CSV_LOGGER = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}}
"""The default logger: ``lightning_logs/version_<n>/metrics.csv`` under the output folder ("." is replaced by
it; configs/logger/wandb.yaml swaps the logger)."""


def _photo_count(datamodule: PseudoViewDataModule) -> int:
    return datamodule.photo_count


class LogConfig(SaveConfigCallback):
    """Save ``config.yaml`` in the log folder (Lightning's behaviour) and in the output folder (the
    config as given, :data:`hfgi3d.run_folder.CONFIG`), and send the resolved config to W&B runs.

    A batch of ``data.images`` saves its config in its batch folder, and in each photo's folder the
    config of that photo alone (``data.image`` and ``data.camera`` in place of ``data.images``), so
    that ``fit --config OUTPUT/<id>/config.yaml`` repeats it and ``edit-texture`` reruns its stage 2."""

    def __init__(
        self,
        *args: Any,
        run_config: Any = None,
        output_dir: str | None = None,
        photo_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        self.output_dir = output_dir
        self.photo_root = photo_root

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.run_config is not None and self.output_dir is not None:
            self._save(self.run_config, Path(self.output_dir))
        if self.run_config is not None and self.photo_root is not None:
            datamodule: Any = trainer.datamodule  # type: ignore[attr-defined]
            for (image, camera), folder in zip(
                datamodule.photos, datamodule.photo_folders(self.photo_root), strict=True
            ):
                single = self.run_config.clone()
                single["data.image"], single["data.camera"], single["data.images"] = str(image), camera, None
                single["data.batch_size"], single["data.batch_index"], single["output_dir"] = 1, 0, str(folder)
                self._save(single, folder)
        for logger in wandb_loggers(trainer):
            logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)

    def _save(self, config: Any, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(config, str(folder / run_folder.CONFIG), skip_none=False, overwrite=True)


def _logger_entries(trainer_config: Any) -> list[Any]:
    """The ``class_path``/``init_args`` entries of ``trainer.logger`` (a list, one, or none)."""
    logger = trainer_config.get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [entry for entry in entries if entry is not None and not isinstance(entry, bool)]


LIBRARY_NOISE = (
    # torch's pytree deprecation, raised inside Lightning's own code: nothing a user can act on.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # The stage-1 generator is frozen in eval mode on purpose (and LPIPS is never trained).
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # Manual optimization: a checkpoint holds the state after the step, which is what resuming needs.
    r"Using ModelCheckpoint with manual optimization",
    # Callbacks are given by the config and rebuilt on resume; Lightning's reminder is about other set-ups.
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
    # With an on-exception checkpoint Lightning looks for one to resume from; fit resumes only from
    # an explicit --ckpt_path (an interrupted run in the output folder is refused, or removed with --overwrite).
    r"`.fit\(ckpt_path=None\)` was called without a model",
    r'.fit\(ckpt_path="last"\) is set, but there is no last checkpoint available',
    # `args` are the command line (python -m hfgi3d passes sys.argv[1:]), a benchmark's or a test's
    # arguments; LightningCLI warns whenever sys.argv is not empty as well.
    r"LightningCLI's args parameter is intended",
)
"""Warnings of the libraries that say nothing to an hfgi3d user, silenced by message (and only these)."""


_LIGHTNING_CHATTER = (
    "try installing [litlogger]",  # a tip to install Lightning's cloud logger
    "Seed set to ",  # the seed is in the run's config.yaml
    "GPU available: ",  # the device a fit runs on is what --trainer.accelerator says
    "TPU available: ",
    "HPU available: ",
    "`Trainer.fit` stopped: `max_steps=",  # the fit ran all its steps: the normal end
)
"""Lines Lightning prints at every fit that tell an hfgi3d user nothing, dropped wherever they hold one of these."""


class _NoChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in _LIGHTNING_CHATTER)


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
    logging.getLogger(_name).addFilter(_NoChatter())


PROG = "python -m hfgi3d"
"""The program name the help's usage lines show."""
_ROLE = re.compile(r":[a-z]+:`~?([^`]*)`")  # :class:`~hfgi3d.x.Name` (Sphinx cross-references)
_QUOTED = re.compile(r"`([^`]*)`_?")  # `code` and `a link <url>`_


def plain_text(text: str) -> str:
    """Docstring markup as plain text: ``:class:`~a.b.Name``` → ``Name``, ````code```` → ``code``."""
    text = _ROLE.sub(lambda match: match.group(1).rsplit(".", 1)[-1] if "~" in match.group(0) else match.group(1), text)
    return _QUOTED.sub(r"\1", text.replace("``", "`"))


class PlainHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help with the docstrings' reStructuredText markup removed."""

    def format_help(self) -> str:
        return plain_text(super().format_help())


class InversionCLI(LightningCLI):
    """``fit``'s LightningCLI: the groups, links and output folder of an inversion (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Errors become exceptions (fit prints one line), no option may be abbreviated, help is plain text.
        kwargs.setdefault(
            "parser_kwargs",
            {"exit_on_error": False, "allow_abbrev": False, "prog": PROG, "formatter_class": PlainHelpFormatter},
        )
        with warnings.catch_warnings():
            for message in LIBRARY_NOISE:
                warnings.filterwarnings("ignore", message=message)
            super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(InversionOutputs, "outputs")
        parser.add_lightning_class_args(Evaluation, "evaluation")
        parser.add_lightning_class_args(WandbMedia, "media")
        parser.add_argument("--output_dir", type=str | None, default=None, help="results (default outputs/<image>)")
        parser.add_argument(
            "--overwrite", action=ActionYesNo, default=False, help="replace existing results (--no_overwrite: refuse)"
        )
        parser.link_arguments(
            ("model.estimate.steps", "model.occluded.steps", "model.pseudo_multiview.steps",
             "model.pseudo_multiview.use_pseudo_views"),
            "trainer.max_steps",
            compute_fn=total_steps,
        )  # fmt: skip
        parser.link_arguments("overwrite", "outputs.overwrite")
        # The model holds one set of weights per photo of the batch the DataModule read.
        parser.link_arguments("data", "model.photos", compute_fn=_photo_count, apply_on="instantiate")
        for source, target in LINKS:
            parser.link_arguments(source, target)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_config = config.clone()  # as given: what follows fills in this run's folders
        inputs = FitInputs.from_config(config.as_dict())
        for note in check_fit_inputs(inputs):
            print(f"note: {note}", file=sys.stderr)
        output_dir = str(output_dir_for(inputs))
        # A batch of data.images keeps its config, logs and checkpoints in its own folder; every
        # photo's results go to output_dir/<image id> (the callbacks' output_dir is the root).
        run_dir = output_dir
        if inputs.images is not None:
            run_dir = str(batch_folder(Path(output_dir), config["data"]["batch_index"]))
        photo_root = output_dir if inputs.images is not None else None
        self.save_config_kwargs.update(run_config=run_config, output_dir=run_dir, photo_root=photo_root)
        for group in CALLBACK_GROUPS:
            config[group]["output_dir"] = output_dir
        if config["trainer"].get("default_root_dir") in (None, "."):
            config["trainer"]["default_root_dir"] = run_dir
        if inputs.images is None:
            image_id = Path(resolve_input(config["data"]["image"], None)[0]).stem
        else:
            image_id = f"{Path(output_dir).name}_{Path(run_dir).name}"
        for entry in _logger_entries(config["trainer"]):
            init_args = entry.get("init_args")
            if init_args is None:
                continue
            if init_args.get("save_dir") in (None, "."):
                init_args["save_dir"] = run_dir
            if str(entry.get("class_path", "")).endswith("WandbLogger") and init_args.get("name") is None:
                init_args["name"] = image_id
        interrupted = Path(run_dir) / INTERRUPTED_CHECKPOINT
        for callback in self.trainer_defaults["callbacks"]:
            if isinstance(callback, InterruptCheckpoint):
                callback.dirpath = str(interrupted.parent)
        if inputs.overwrite and inputs.ckpt_path is None and interrupted.is_file():
            print(f"note: starting over: removed the interrupted run's {interrupted}", file=sys.stderr)
            interrupted.unlink()
        if config["trainer"].get("enable_progress_bar") is False:  # Lightning refuses a bar it was told not to show
            self.trainer_defaults["callbacks"] = [
                callback
                for callback in self.trainer_defaults["callbacks"]
                if not isinstance(callback, StageProgressBar)
            ]

    def before_fit(self) -> None:
        """The photo against the generator's size, where that was unknown before the generator was read."""
        datamodule: Any = self.datamodule
        resolution = self.model.G.config.img_resolution
        for path, _ in datamodule.photos:
            read_photo(path, resolution)


def main(args: Sequence[str]) -> int:
    """Run the LightningCLI with ``args`` (starting with the subcommand, e.g. ``fit``).

    With ``data.images`` the photos are inverted ``data.batch_size`` at a time, one fit per batch
    (:func:`fit_batches`). Returns 0, or 130 / 143 when Ctrl-C / SIGTERM interrupted the fit,
    after saying where the resumable checkpoint is and the command that resumes it. Bad input
    raises :class:`~hfgi3d.errors.InputError` (or jsonargparse's ``ArgumentError``) before
    anything is built.
    """
    args = list(args)
    if only_describes(args[1:]):
        return _fit(args, args)
    inputs = fit_inputs_from_argv(args[1:])
    if inputs.images is not None:
        return fit_batches(args, inputs)
    return _fit(args, args)


def fit_batches(args: list[str], inputs: FitInputs) -> int:
    """Every batch of ``data.images``, one fit each, in file-name order.

    Running the same command again continues the job: a batch whose photos all have results
    (``metrics.json``, or ``failed.json`` for a dropped photo) is skipped, and ``--ckpt_path``
    resumes the batch whose folder holds that checkpoint. ``--overwrite`` reruns every batch.
    """
    assert inputs.images is not None
    root = output_dir_for(inputs)
    batches = batch_ids(inputs.images, inputs.batch_size)
    resumed = _batch_of_checkpoint(root, inputs.ckpt_path, len(batches))
    plain = _without_option(args, "--ckpt_path")
    for index, ids in enumerate(batches):
        finished = [image_id for image_id in ids if _has_results(root / image_id)]
        if len(finished) == len(ids) and not inputs.overwrite and index != resumed:
            print(f"note: batch {index} ({', '.join(ids)}) already has results: skipped", file=sys.stderr)
            continue
        batch_args = [*plain, "--data.batch_index", str(index)]
        if index == resumed:
            batch_args += ["--ckpt_path", str(inputs.ckpt_path)]
        elif finished and not inputs.overwrite:  # a batch stopped while writing: its results are this job's
            batch_args.append("--overwrite")
        print(f"batch {index + 1}/{len(batches)}: {', '.join(ids)}", file=sys.stderr)
        code = _fit(batch_args, args)
        if code != 0:
            return code
    return 0


def _has_results(folder: Path) -> bool:
    return all((folder / name).is_file() for name in run_folder.RESULT_FILES) or (folder / run_folder.FAILED).is_file()


def _batch_of_checkpoint(root: Path, ckpt_path: str | None, count: int) -> int | None:
    """The batch whose folder holds ``ckpt_path`` (``None`` without one)."""
    if ckpt_path is None:
        return None
    checkpoint = Path(ckpt_path).resolve()
    for index in range(count):
        if batch_folder(root, index).resolve() in checkpoint.parents:
            return index
    raise InputError(
        f"--ckpt_path {ckpt_path} is not inside a batch folder of {root} (batch_0 … batch_{count - 1}): "
        "resume with a checkpoint this job wrote"
    )


def _without_option(args: list[str], option: str) -> list[str]:
    """``args`` without ``option`` and its value (``--option value`` or ``--option=value``)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


def _cli(args: list[str], interrupt: InterruptCheckpoint, cli_class: type[InversionCLI] = InversionCLI) -> InversionCLI:
    """``fit``'s LightningCLI on ``args`` (parsed and run)."""
    callbacks = [LearningRateMonitor(logging_interval="step"), StepTimer(), StageProgressBar(), interrupt]
    return cli_class(
        InversionModule,
        PseudoViewDataModule,
        save_config_callback=LogConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": callbacks, "logger": CSV_LOGGER},
        seed_everything_default=0,
        args=args,
    )


class _Built(Exception):
    def __init__(self, parser: ArgumentParser) -> None:
        self.parser = parser


class _ParserOnly(InversionCLI):
    """Builds the parser and stops before parsing anything."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        raise _Built(self._subcommand_parsers["fit"])


def fit_parser() -> ArgumentParser:
    """The parser of ``fit``'s options exactly as :func:`main` builds it (nothing parsed or run)."""
    try:
        _cli(["fit"], InterruptCheckpoint(), _ParserOnly)
    except _Built as built:
        return built.parser
    raise AssertionError("LightningCLI parsed its arguments without calling parse_arguments")


def _fit(args: list[str], user_args: list[str]) -> int:
    """One LightningCLI fit with ``args``; ``user_args`` (the command as typed) go into the resume hint."""
    interrupt = InterruptCheckpoint()
    try:
        cli = _cli(args, interrupt)
    except (SystemExit, SIGTERMException):
        if interrupt.signal is None:
            raise
        # Lightning ignores further Ctrl-C while it shuts down; give the process its handler back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(_resume_message(interrupt, user_args), file=sys.stderr)
        return 128 + (signal.SIGINT if interrupt.signal == "SIGINT" else signal.SIGTERM)
    trainer = getattr(cli, "trainer", None)
    for logger in wandb_loggers(trainer) if trainer is not None else []:
        if logger._experiment is not None:
            logger.experiment.finish()  # flush the run now (offline files complete), not at exit
    return 0


def _resume_message(interrupt: InterruptCheckpoint, args: list[str]) -> str:
    """Where the interrupted run's checkpoint is, and the exact command that resumes it."""
    kept = _without_option(args, "--ckpt_path")  # a previous one: the resume starts from the new file
    command = shlex.join(["python", "-m", "hfgi3d", *kept, "--ckpt_path", interrupt.ckpt_path])
    return (
        f"interrupted ({interrupt.signal}) after step {interrupt.step}: the run is saved in {interrupt.ckpt_path}\n"
        f"resume with: {command}"
    )
