"""Command line: ``python -m hfgi3d <command>``.

Commands:
    fit                          invert one photo (LightningCLI; see hfgi3d/fit.py and configs/)
    convert-eg3d IN.pkl          convert an official EG3D network pickle to an hfgi3d checkpoint
    render                       render views of a generator (official pickle, checkpoint or tiny)
    preprocess IN                align face photos to EG3D's FFHQ crop and estimate their cameras
    directions fit               fit an attribute direction in W (InterFaceGAN)
    edit RUN_DIR                 edit a fitted photo along attribute directions
    edit-texture RUN_DIR         carry a painted input photo into every view

Every command answers a bad input with one line (``error: …``) and exit code 2, before it builds
or writes anything; ``--debug`` (or ``HFGI3D_DEBUG=1``) shows the traceback instead. Options are
spelt with underscores, as LightningCLI spells ``fit``'s, and never abbreviated; a results folder is
``--output_dir``, a single result file ``--output``; ``--overwrite`` is a bare flag everywhere.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from hfgi3d import __version__
from hfgi3d.errors import InputError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "HFGI3D_DEBUG"
USER_ERRORS = (InputError, argparse.ArgumentError, FileNotFoundError, FileExistsError, ValueError)
"""What a command reports in one line: bad input, files in the way, unusable files (ValueError
covers the generator and checkpoint loaders' messages)."""


REQUIRED_OUTPUTS = {"preprocess": "--output_dir", "directions fit": "--output"}
"""Output options a command cannot do without (not argparse-required: an unrecognized word that
meant one is reported first, with the hint)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser (every subcommand's too) whose errors are one line, not argparse's usage block:
    it raises :class:`InputError` ("… (see `PROG --help`)"), which :func:`main` (and ``python -m
    hfgi3d.benchmarks``) print as ``error: …`` with exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns its exit code (2 for bad input, reported in one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        return _run(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The error's message on one line (jsonargparse and torch spread theirs over several)."""
    return " ".join(str(error).split())


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "fit":
        from hfgi3d.fit_reference import check_option_names, stored_help
        from hfgi3d.validation import (
            asks_for_help,
            check_fit_inputs,
            check_stage_lengths,
            config_from_argv,
            fit_inputs_from_argv,
            given_values,
            only_describes,
        )

        # Answered and checked before Lightning is even imported: a bad input is refused in about a second.
        check_option_names(argv[1:])
        help_text = stored_help() if asks_for_help(argv[1:]) else None
        if help_text is not None:
            print(help_text, end="")
            values = given_values(config_from_argv(argv[1:]))
            if values:
                print("\nvalues given (by --config files, then options; they replace the defaults above):")
                print("\n".join(f"  {line}" for line in values))
            return 0
        if not only_describes(argv[1:]):
            inputs = fit_inputs_from_argv(argv[1:])
            check_stage_lengths(inputs)
            check_fit_inputs(inputs)
        from hfgi3d.fit import main as fit_main

        return fit_main(argv)
    args = parse_command(argv)
    return int(args.run(args))


def parse_command(argv: list[str]) -> argparse.Namespace:
    """Parse the command line of a command other than ``fit`` (whose options LightningCLI parses),
    without running it: ``args.run(args)`` does. Raises :class:`InputError` for a bad command line."""
    from hfgi3d.pose.registry import POSE_ESTIMATORS

    parser = OneLineErrorParser(
        prog="python -m hfgi3d",
        description="hfgi3d: invert a face photo into EG3D with pseudo-multi-view optimization, re-render it from "
        "new viewpoints and edit it. `python -m hfgi3d COMMAND --help` describes each command.",
        allow_abbrev=False,
        exit_on_error=False,
    )
    parser.add_argument("--version", action="version", version=f"hfgi3d {__version__}")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show the full traceback of an error (or set {DEBUG_ENV}=1); any command"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("fit", help="invert one photo (`python -m hfgi3d fit --help` lists every option)")

    convert = commands.add_parser(
        "convert-eg3d",
        allow_abbrev=False,
        help="convert an official EG3D network pickle to an hfgi3d checkpoint",
        description="Read G_ema from an official EG3D pickle (no code in it is executed) "
        "and write an hfgi3d checkpoint that loads with torch.load(weights_only=True).",
    )
    convert.add_argument("input", type=Path, help="EG3D network pickle, e.g. ffhq512-128.pkl")
    convert.add_argument(
        "--output", type=Path, default=None, help="hfgi3d checkpoint to write (default: INPUT with the suffix .pt)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    convert.set_defaults(run=_convert_eg3d)

    render = commands.add_parser(
        "render",
        allow_abbrev=False,
        help="render a grid of views of a generator for some seeds",
        description="Render each seed from a yaw × pitch grid of cameras (EG3D convention) "
        "and write one image grid and one depth grid per seed.",
    )
    render.add_argument(
        "--generator", default="tiny",
        help="EG3D .pkl, hfgi3d .pt, a GeneratorConfig .yaml (random weights, e.g. configs/generator/ffhq512.yaml) "
        "or 'tiny' for the small random generator of configs/generator/tiny.yaml (default)",
    )  # fmt: skip
    render.add_argument("--seeds", type=int, nargs="+", default=[0], help="latent seeds (default: 0)")
    render.add_argument("--truncation_psi", type=float, default=0.7, help="truncation towards w_avg (default 0.7)")
    render.add_argument("--yaw_deg", type=float, default=20.0, help="max |yaw| of the grid in degrees (default 20)")
    render.add_argument("--pitch_deg", type=float, default=14.0, help="max |pitch| of the grid in degrees (default 14)")
    render.add_argument(
        "--views", type=int, nargs=2, default=[5, 3], metavar=("YAW", "PITCH"), help="grid size (default 5 3)"
    )
    render.add_argument(
        "--output_dir", type=Path, default=Path("outputs/render"), help="results folder (default outputs/render)"
    )
    _add_device(render, "where the generator runs")
    render.add_argument("--overwrite", action="store_true", help="replace existing images")
    render.set_defaults(run=_render)

    preprocess = commands.add_parser(
        "preprocess",
        allow_abbrev=False,
        help="align face photos to EG3D's FFHQ crop and estimate their cameras",
        description="Detect the face of each photo (MTCNN), cut EG3D's 512² FFHQ-aligned crop (roll removed) and "
        "estimate its camera (MediaPipe's landmarks where installed, else five MTCNN points). Writes "
        "OUTPUT_DIR/<stem>.png, an EG3D dataset.json with the cameras, preprocess_report.json and pose_check.png (the "
        "crops with their landmarks and head pose drawn on them); bad photos are skipped "
        "and reported. Exit code 0 if at least one photo was aligned, 2 otherwise. See hfgi3d/preprocess/ for the "
        "conventions.",
    )
    preprocess.add_argument("input", type=Path, help="a photo, or a folder of photos (not recursive)")
    preprocess.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="results folder, required: the crops and their cameras (created if missing)",
    )
    preprocess.add_argument(
        "--face_index", type=int, default=0, help="with several faces, keep the K-th most confident (default 0)"
    )
    preprocess.add_argument(
        "--single_face", action="store_true", help="skip photos with several faces instead of keeping one"
    )
    preprocess.add_argument("--size", type=int, default=512, help="crop side in pixels (default 512)")
    preprocess.add_argument(
        "--min_face_px", type=int, default=64, help="ignore faces smaller than this in the photo (default 64)"
    )
    preprocess.add_argument(
        "--pose_estimator", choices=("auto", *POSE_ESTIMATORS), default=None,
        help="auto (default; deep3d when --deep3d_checkpoint is given): MediaPipe's Face Landmarker where "
        "installed, else pnp5. "
        + "; ".join(f"{name}: {entry.summary}" for name, entry in POSE_ESTIMATORS.items())
        + " (docs/reference.md: accuracy table)",
    )  # fmt: skip
    preprocess.add_argument(
        "--deep3d_checkpoint", type=Path, default=None, metavar="PATH",
        help="Deep3DFaceRecon_pytorch's epoch_20.pth (its README links it); needed by --pose_estimator deep3d",
    )  # fmt: skip
    preprocess.add_argument("--overwrite", action="store_true", help="replace crops that already exist in --output_dir")
    _add_device(preprocess, "where the face detector and pose estimator run")
    preprocess.set_defaults(run=_preprocess)

    directions = commands.add_parser(
        "directions", allow_abbrev=False, help="attribute directions in W for latent editing (InterFaceGAN)"
    )
    direction_commands = directions.add_subparsers(dest="directions_command", required=True, metavar="ACTION")
    fit_dir = direction_commands.add_parser(
        "fit",
        allow_abbrev=False,
        help="sample, render at the frontal camera, score, and fit a linear SVM",
        description="Sample latents, render each at the canonical (frontal) camera, score it, keep the --top "
        "highest and lowest, train a linear SVM on 70 % of them and test it on 30 %; the SVM's unit normal is "
        "the direction. Scores are kept in chunks beside --output, so a killed run resumes.",
    )
    fit_dir.add_argument("--generator", required=True, help="EG3D .pkl, hfgi3d .pt, a GeneratorConfig .yaml or 'tiny'")
    fit_dir.add_argument(
        "--scorer",
        required=True,
        help="what scores each render: mean_luma (model-free), smile (MediaPipe blendshapes), age (expected years), "
        "gender (probability of male), the three with the editing extra (docs/reference.md), or classifier "
        "(see --classifier)",
    )
    fit_dir.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="image classifier for --scorer classifier: TorchScript (.pt) or ONNX (.onnx, run by onnxruntime)",
    )
    fit_dir.add_argument("--output_index", type=int, default=0, help="the classifier output that scores (default 0)")
    fit_dir.add_argument("--classifier_size", type=int, default=224, help="classifier input size (default 224)")
    fit_dir.add_argument(
        "--classifier_range", default="0,1", help="classifier input: 0,1 (default), -1,1 or imagenet (normalised 0,1)"
    )
    fit_dir.add_argument("--attribute", required=True, help="label stored with the direction (e.g. smile)")
    fit_dir.add_argument("--samples", type=int, default=500_000, help="latents sampled (the paper: 500000)")
    fit_dir.add_argument("--top", type=int, default=10_000, help="kept at each end of the scores (the paper: 10000)")
    fit_dir.add_argument("--output", type=Path, default=None, help="direction file to write (.pt), required")
    fit_dir.add_argument("--seed", type=int, default=0, help="seed of the latent samples (default 0)")
    fit_dir.add_argument("--batch_size", type=int, default=16, help="renders per generator call (default 16)")
    fit_dir.add_argument("--chunk", type=int, default=1000, help="samples per stored score chunk (default 1000)")
    fit_dir.add_argument("--truncation_psi", type=float, default=1.0, help="truncation of the samples (default 1)")
    _add_device(fit_dir, "where the generator and the attribute scorer run")
    fit_dir.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    fit_dir.set_defaults(run=_fit_direction)

    edit = commands.add_parser(
        "edit",
        allow_abbrev=False,
        help="edit a fitted photo along an attribute direction (smile, age, ...)",
        description="Move a run's latent along a direction (ws + strength·d) and render it with the run's tuned "
        "generator: RUN_DIR/edits/<name>/ gets grid.png (rows: strengths; the input camera, then yaws), "
        "input_view_<strength>.png, orbit_<strength>.mp4 and the mesh at the largest strength. Strength 0 "
        "reproduces the run's reconstruction. A run that logged to W&B gets the edit as media.",
    )
    edit.add_argument("run_dir", type=Path, help="the output folder of a finished fit")
    edit.add_argument(
        "--direction", type=Path, required=True, help="direction file: .pt or .npy, W or W+ (see docs/reference.md)"
    )
    edit.add_argument(
        "--strength", type=float, nargs="+", default=[-2.0, 0.0, 2.0], help="strengths α (default -2 0 2)"
    )
    edit.add_argument(
        "--condition", type=Path, nargs="+", default=[],
        help="directions to project out of --direction (InterFaceGAN's conditional editing)",
    )  # fmt: skip
    edit.add_argument(
        "--layers", type=int, nargs=2, default=None, metavar=("START", "STOP"),
        help="edit only the latent layers START ≤ l < STOP (default: all)",
    )  # fmt: skip
    edit.add_argument("--name", default=None, help="edit folder name (default: the direction's file name)")
    _add_device(edit, "where the edited views are rendered")
    edit.add_argument("--overwrite", action="store_true", help="replace an existing edit of that name")
    edit.set_defaults(run=_edit)

    texture = commands.add_parser(
        "edit-texture",
        allow_abbrev=False,
        help="carry a painted input photo into every view (reruns stage 2 on the run's geometry)",
        description="Paint on the run's aligned input (RUN_DIR/input.png) in any editor, then give the painted "
        "copy: the pseudo views are rebuilt from it on the run's stage-1 geometry (w_e, w_o, cameras, "
        "visibility) and stage 2 runs again. Writes a full run folder in RUN_DIR/texture_edits/<name>/. "
        "Further fit options (e.g. --model.pseudo_multiview.steps 500) may follow.",
    )
    texture.add_argument("run_dir", type=Path, help="the output folder of a finished fit")
    texture.add_argument("--image", type=Path, required=True, help="the painted copy of RUN_DIR/input.png")
    texture.add_argument("--name", default=None, help="result folder name (default: the image's file name)")
    texture.add_argument("--overwrite", action="store_true", help="replace an existing texture edit of that name")
    texture.set_defaults(run=_edit_texture)
    parsers = {
        "convert-eg3d": convert, "render": render, "preprocess": preprocess, "directions fit": fit_dir,
        "edit": edit, "edit-texture": texture,
    }  # fmt: skip

    args, unknown = parser.parse_known_args(argv)
    command = " ".join(word for word in (args.command, getattr(args, "directions_command", None)) if word)
    options = [name for action in parsers[command]._actions for name in action.option_strings]
    see = f"(see `python -m hfgi3d {command} --help`)"
    if args.command == "edit-texture":  # what follows its own options is passed on to fit
        args.fit_args = unknown
    elif unknown:  # named with the command's own help, not the top level's
        hint = next(filter(None, (_hint(word, options) for word in unknown)), "")
        raise InputError(f"unrecognized arguments: {' '.join(unknown)}{hint} {see}")
    # Output options that must be given: checked here, after the unknown words that may have meant them.
    required = REQUIRED_OUTPUTS.get(command)
    if required is not None and getattr(args, required[2:]) is None:
        raise InputError(f"the following arguments are required: {required} {see}")
    if args.command == "convert-eg3d" and args.output is None:
        args.output = args.input.with_suffix(".pt")
    return args


def _hint(word: str, options: list[str]) -> str:
    """What an unrecognized word probably meant: the option spelt with ``_`` (every command's style, as
    LightningCLI's ``fit``), a close option name, or the output folder or file given by name."""
    if word.startswith("--"):
        name = word.split("=", 1)[0]
        snake = "--" + name[2:].replace("-", "_")
        close = [snake] if snake in options else difflib.get_close_matches(name, options, n=1, cutoff=0.75)
        return f": did you mean {close[0]}?" if close else ""
    if not word.startswith("-") and "--output_dir" in options:
        return f": the results folder is named by an option, --output_dir {word}"
    if not word.startswith("-") and "--output" in options:
        return f": the file to write is named by an option, --output {word}"
    return ""


def _convert_eg3d(args: argparse.Namespace) -> int:
    from hfgi3d.generator import load_generator, save_generator
    from hfgi3d.generator.eg3d_pickle import DOWNLOAD_HINT

    if not args.input.is_file():
        raise InputError(f"EG3D network pickle not found: {args.input}; {DOWNLOAD_HINT}")
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    generator = load_generator(args.input)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_generator(generator, args.output)
    config = generator.config
    print(
        f"wrote {args.output}: {config.img_resolution}² images, planes {config.plane_resolution}², "
        f"{config.superresolution}, neural rendering {config.rendering.neural_rendering_resolution}²"
    )
    return 0


def _device(text: str) -> str:
    """``--device``: ``auto`` is ``cuda`` when PyTorch sees a GPU, else ``cpu`` (torch is imported only here,
    so that ``--help`` stays fast)."""
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_device(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--device", type=_device, default="auto", metavar="DEVICE",
        help=f"{what}: cpu, cuda, cuda:1, … (default auto: cuda when there is a GPU, else cpu)",
    )  # fmt: skip


def _render(args: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import save_image
    from tqdm import tqdm

    from hfgi3d.cameras import frontal_c25, orbit_c25, yaw_pitch_grid
    from hfgi3d.generator import open_generator

    generator = open_generator(args.generator).to(args.device)
    num_yaw, num_pitch = args.views
    yaw, pitch = yaw_pitch_grid(
        (-math.radians(args.yaw_deg), math.radians(args.yaw_deg)),
        (-math.radians(args.pitch_deg), math.radians(args.pitch_deg)),
        num_yaw, num_pitch,
    )  # fmt: skip
    cameras = orbit_c25(yaw, pitch).to(args.device)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for seed in tqdm(args.seeds, desc="render", unit="seed"):
        image_path = args.output_dir / f"seed{seed:04d}.png"
        depth_path = args.output_dir / f"seed{seed:04d}_depth.png"
        if not args.overwrite and (image_path.exists() or depth_path.exists()):
            raise FileExistsError(f"{image_path} exists; pass --overwrite or another --output_dir")
        z = torch.randn([1, generator.config.z_dim], generator=torch.Generator().manual_seed(seed)).to(args.device)
        start = time.perf_counter()
        with torch.no_grad():
            ws = generator.mapping(z, frontal_c25().to(args.device), truncation_psi=args.truncation_psi)
            planes = generator.planes(ws)
            views = generator.render_cameras(planes, ws, cameras)
        images = views["image"].clamp(-1, 1) * 0.5 + 0.5
        depths = views["image_depth"]
        depths = (depths - depths.amin()) / (depths.amax() - depths.amin()).clamp_min(1e-8)
        save_image(images, image_path, nrow=num_yaw)
        save_image(1 - depths, depth_path, nrow=num_yaw)
        tqdm.write(f"seed {seed}: {len(cameras)} views in {time.perf_counter() - start:.2f} s -> {image_path}")
    return 0


def _fit_direction(args: argparse.Namespace) -> int:
    from hfgi3d.editing.direction_fit import fit_direction

    metadata = fit_direction(
        args.generator, args.scorer, args.attribute, args.samples, args.top, args.output, seed=args.seed,
        batch_size=args.batch_size, chunk=args.chunk, truncation_psi=args.truncation_psi, device=args.device,
        overwrite=args.overwrite, classifier=args.classifier, output_index=args.output_index,
        input_size=args.classifier_size, input_range=args.classifier_range,
    )  # fmt: skip
    scored = metadata["samples_scored_now"]
    rate = metadata["seconds_scoring"] / scored * 10_000 if scored else float("nan")
    without_face = metadata["samples_without_face"]
    print(
        f"wrote {args.output}: {args.attribute} by {args.scorer}, SVM accuracy {metadata['accuracy']:.3f} "
        f"on the held-out 30 % of {2 * args.top} samples; scored {scored} samples now ({rate:.0f} s per 10k)"
        + (f"; {without_face} of {args.samples} renders had no face and were left out" if without_face else "")
    )
    return 0


def _edit(args: argparse.Namespace) -> int:
    from hfgi3d.run_folder import check_finished_run

    check_finished_run(args.run_dir)  # before torch is imported: a wrong folder is refused at once
    for path in [args.direction, *args.condition]:
        if not Path(path).is_file():
            raise InputError(f"no direction file {path}")
    from hfgi3d.editing.edit import edit

    out = edit(
        args.run_dir, args.direction, args.strength, args.condition, tuple(args.layers) if args.layers else None,
        args.name, args.device, args.overwrite,
    )  # fmt: skip
    print(f"wrote {out}: {len(args.strength)} strengths ({' '.join(f'{s:g}' for s in args.strength)})")
    return 0


def _edit_texture(args: argparse.Namespace) -> int:
    from hfgi3d.run_folder import check_finished_run

    check_finished_run(args.run_dir)
    if not Path(args.image).is_file():
        raise InputError(f"no edited photo {args.image}")
    from hfgi3d.editing.edit import edit_texture

    out = edit_texture(args.run_dir, args.image, args.name, args.overwrite, args.fit_args)
    print(f"wrote {out}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from hfgi3d.io import list_inputs

    list_inputs(Path(args.input))  # a missing input or an empty folder is refused before the models load
    from hfgi3d.faces import make_detector
    from hfgi3d.pose import PoseEstimator
    from hfgi3d.pose.registry import POSE_ESTIMATORS, EstimatorOptions, make_pose_estimator
    from hfgi3d.preprocess import PreprocessOptions, format_summary, preprocess

    options = PreprocessOptions(
        size=args.size,
        face_index=args.face_index,
        single_face=args.single_face,
        overwrite=args.overwrite,
        min_face_px=args.min_face_px,
    )
    estimator: PoseEstimator | None = None  # auto: preprocess picks, and notes a missing MediaPipe in its report
    choice = args.pose_estimator or ("deep3d" if args.deep3d_checkpoint is not None else "auto")
    if args.deep3d_checkpoint is not None and (choice == "auto" or not POSE_ESTIMATORS[choice].needs_checkpoint):
        raise InputError(f"--deep3d_checkpoint is only read by --pose_estimator deep3d, not {choice}")
    if choice != "auto":
        estimator = make_pose_estimator(choice, EstimatorOptions(args.deep3d_checkpoint, args.device))
    report = preprocess(
        args.input, args.output_dir, options, detector=make_detector(args.device), progress=True, estimator=estimator
    )
    print(format_summary(report))
    if not report.processed:
        print(f"error: no photo could be aligned (the reasons are above and in {args.output_dir}/)", file=sys.stderr)
        return 2
    return 0
