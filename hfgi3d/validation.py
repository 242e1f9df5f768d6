"""Checks of ``fit``'s inputs, made before anything heavy is imported, built or written.

:func:`fit_inputs_from_argv` reads the few values the checks need from the command line and the
YAML files it names, without LightningCLI, so a wrong photo, camera, generator file, results
folder or step count is refused in well under a second, before torch models or Lightning are
loaded. ``fit`` runs the same :func:`check_fit_inputs` on the parsed config before it builds
anything (the authority, should a value come in a form this fast reader does not know).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hfgi3d.data.inputs import SAMPLE, list_photos, load_camera, read_photo, resolve_input
from hfgi3d.errors import InputError
from hfgi3d.generator.checkpoint import generator_resolution
from hfgi3d.presets import get, merged, put
from hfgi3d.run_folder import RESULT_FILES
from hfgi3d.stages import FORMER_KEYS, STAGES

INTERRUPTED_CHECKPOINT = Path("checkpoints") / "interrupted.ckpt"
"""Where, inside its output folder, an interrupted fit leaves its resumable checkpoint."""

COUNT_MINIMUM = {
    "model.estimate.steps": 0,
    "model.pseudo_multiview.steps": 0,
    "model.occluded.steps": 0,
    "model.w_avg_samples": 1,
    "data.num_views": 1,
}
"""Step and view counts, with the smallest value each accepts."""


@dataclass
class FitInputs:
    """What the checks look at, as ``fit`` would receive it (``None``: not given)."""

    generator: str | None = None
    image: str | None = None
    camera: str | None = None
    images: str | None = None
    batch_size: int = 1
    batch_index: int | None = None
    output_dir: str | None = None
    overwrite: bool = False
    ckpt_path: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FitInputs:
        """From a nested config (the YAML layout, or ``fit``'s parsed namespace as a dict)."""
        return cls(
            generator=get(config, "model.generator"),
            image=get(config, "data.image"),
            camera=get(config, "data.camera"),
            images=get(config, "data.images"),
            batch_size=get(config, "data.batch_size") or 1,
            batch_index=get(config, "data.batch_index"),
            output_dir=get(config, "output_dir") or get(config, "outputs.output_dir"),
            overwrite=bool(get(config, "overwrite")),
            ckpt_path=get(config, "ckpt_path"),
            counts={key: get(config, key) for key in COUNT_MINIMUM if get(config, key) is not None},
        )


def output_dir_for(inputs: FitInputs) -> Path:
    """The run's folder: ``--output_dir``, else ``outputs/<photo name>`` (``outputs/<folder name>``
    for ``data.images``, whose photos get a folder each inside it)."""
    if inputs.output_dir:
        return Path(inputs.output_dir)
    if inputs.images is not None:
        images = Path(inputs.images)
        return Path("outputs") / (images.parent.name if images.is_file() else images.resolve().name)
    image, _ = resolve_input(inputs.image or SAMPLE, None)
    return Path("outputs") / image.stem


def batch_folder(output_dir: Path, batch_index: int) -> Path:
    """Where batch ``batch_index`` of a ``data.images`` fit keeps its config, logs and checkpoints
    (its photos' results go to ``output_dir/<image id>``)."""
    return output_dir / f"batch_{batch_index}"


def batch_ids(images: str, batch_size: int) -> list[list[str]]:
    """The image ids of each batch of ``data.images``, in the order ``fit`` runs them."""
    ids = [photo.stem for photo, _ in list_photos(images)]
    return [ids[first : first + batch_size] for first in range(0, len(ids), batch_size)]


def check_fit_inputs(inputs: FitInputs) -> list[str]:
    """Refuse what ``fit`` cannot use (:class:`~hfgi3d.errors.InputError`, one line); returns notes
    on conversions made (a grayscale photo, …). Reads the photo and the camera, nothing else."""
    for key, value in inputs.counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < COUNT_MINIMUM[key]:
            raise InputError(f"--{key} must be a whole number ≥ {COUNT_MINIMUM[key]}, got {value!r}")
    stages = [inputs.counts.get(key) for key in ("model.estimate.steps", "model.pseudo_multiview.steps")]
    if stages == [0, 0]:
        raise InputError("--model.estimate.steps and --model.pseudo_multiview.steps are both 0: nothing to fit")
    resolution = None if inputs.generator is None else generator_resolution(inputs.generator)
    notes: list[str] = []
    if inputs.image is not None and inputs.images is not None:
        raise InputError("give data.image (one photo) or data.images (a folder or dataset.json), not both")
    if inputs.image is None and inputs.images is None:
        raise InputError(
            "no photo: pass --data.image PHOTO (and --data.camera CAMERA) or --data.images FOLDER_OR_dataset.json"
        )
    if isinstance(inputs.batch_size, bool) or not isinstance(inputs.batch_size, int) or inputs.batch_size < 1:
        raise InputError(f"--data.batch_size must be a whole number ≥ 1, got {inputs.batch_size!r}")
    if inputs.images is not None:
        photos = list_photos(inputs.images)
        if inputs.batch_index is not None:  # one batch of the fit (the command checked them all before)
            first = inputs.batch_index * inputs.batch_size
            photos = photos[first : first + inputs.batch_size]
        for photo, camera_file in photos:
            notes += read_photo(photo, resolution)[1]
            load_camera(camera_file, photo)
        _check_batch_folders(output_dir_for(inputs), inputs)
    else:
        if inputs.image is not None:
            image, camera = resolve_input(inputs.image, inputs.camera)
            _, notes = read_photo(image, resolution)
            load_camera(camera, image)
        _check_output_dir(output_dir_for(inputs), inputs.overwrite, inputs.ckpt_path)
    if inputs.ckpt_path is not None and not Path(inputs.ckpt_path).is_file():
        raise InputError(f"checkpoint to resume from not found: {inputs.ckpt_path}")
    return notes


STAGE_LENGTHS = tuple(f"model.{stage}.steps" for stage in STAGES)


def check_stage_lengths(inputs: FitInputs) -> None:
    """Refuse a command line whose configs leave a stage's length unset: overlays such as
    ``configs/photo.yaml`` or ``configs/demo.yaml`` change a preset and come after it."""
    missing = [key for key in STAGE_LENGTHS if key not in inputs.counts]
    if missing:
        raise InputError(
            f"{', '.join(missing)} not set: start with a full preset, e.g. --config configs/hfgi3d.yaml, "
            "then the overlays that change it (--config configs/photo.yaml, configs/demo.yaml, …)"
        )


def _check_batch_folders(folder: Path, inputs: FitInputs) -> None:
    """A ``data.images`` fit: no batch left interrupted unless resumed (``--ckpt_path``) or started over."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the output folder {folder} is a file: choose another --output_dir")
    assert inputs.images is not None
    for index in range(len(batch_ids(inputs.images, inputs.batch_size))):
        interrupted = batch_folder(folder, index) / INTERRUPTED_CHECKPOINT
        if interrupted.is_file() and inputs.ckpt_path is None and not inputs.overwrite:
            raise InputError(
                f"batch {index} in {folder} was interrupted: resume it with --ckpt_path {interrupted}, "
                "or pass --overwrite to start over"
            )


def _check_output_dir(folder: Path, overwrite: bool, ckpt_path: str | None) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the output folder {folder} is a file: choose another --output_dir")
    interrupted = folder / INTERRUPTED_CHECKPOINT
    if interrupted.is_file() and ckpt_path is None and not overwrite:
        raise InputError(
            f"{folder} holds an interrupted run: resume it with --ckpt_path {interrupted}, "
            "or pass --overwrite to start over"
        )
    existing = [name for name in RESULT_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise InputError(
            f"{folder} already holds results ({', '.join(existing)}); pass --overwrite to replace them "
            "or choose another --output_dir"
        )


def asks_for_help(args: Sequence[str]) -> bool:
    """Whether ``fit``'s arguments hold ``--help`` (or ``-h``)."""
    return any(arg in ("-h", "--help") for arg in args)


def only_describes(args: Sequence[str]) -> bool:
    """Whether ``fit``'s arguments ask only for a description (``--help``, ``--print_config``): then
    no input is checked, no photo is needed and nothing runs."""
    return asks_for_help(args) or any(arg.split("=")[0] == "--print_config" for arg in args)


def fit_inputs_from_argv(args: Sequence[str]) -> FitInputs:
    """:class:`FitInputs` from ``fit``'s arguments (after the word ``fit``), read by :func:`config_from_argv`.

    Raises:
        InputError: a config file is missing or not YAML.
    """
    return FitInputs.from_config(config_from_argv(args))


def config_from_argv(args: Sequence[str]) -> dict[str, Any]:
    """The nested config ``fit``'s arguments give (after the word ``fit``): the ``--config`` files
    merged in order, then the ``--key value`` / ``--key=value`` overrides (values read as YAML).

    Raises:
        InputError: a config file is missing or not YAML.
    """
    config: dict[str, Any] = {}
    overrides: dict[str, str] = {}
    tokens = list(args)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("-"):
            continue
        key, has_value, value = token.lstrip("-").partition("=")
        if not has_value:
            follows = index < len(tokens) and not tokens[index].startswith("--")
            value = tokens[index] if follows else ""
            index += follows
        if key in ("config", "c"):
            content = _read_yaml(value)
            former = [key for key in FORMER_KEYS if key in (content.get("model") or {})]
            if former:
                renames = ", ".join(f"model.{key} → model.{FORMER_KEYS[key]}" for key in former)
                raise InputError(f"{value} uses the former names of stage settings: rename {renames}")
            config = merged(config, content)
        else:
            overrides[key] = value
    for key, value in overrides.items():  # an appended callback's `--trainer.callbacks.<arg>` is not set here
        put(config, key, _yaml_value(value))
    if "no_overwrite" in overrides:
        config["overwrite"] = False
    elif "overwrite" in overrides and overrides["overwrite"] == "":
        config["overwrite"] = True  # a bare --overwrite
    for describing in ("help", "h", "print_config"):
        config.pop(describing, None)
    return config


END_OF_DOCUMENT = "\n...\n"
"""What ``yaml.safe_dump`` ends a lone scalar with."""


def given_values(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``--key value`` lines of a nested config, one per leaf, each value as the command line takes it
    (YAML; lists and class specs in flow style)."""
    lines = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and "class_path" not in value:
            lines += given_values(value, f"{name}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False)
            lines.append(f"--{name} {text.removesuffix(END_OF_DOCUMENT).strip()}")
    return lines


def _read_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"config file not found: {file}")
    try:
        content = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{file} is not a YAML config: {error}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise InputError(f"{file} is not a config: expected keys and values at its top level")
    return content


def _yaml_value(text: str) -> Any:
    """A command-line value read as YAML (``3`` → 3, ``null`` → None), as jsonargparse does."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
