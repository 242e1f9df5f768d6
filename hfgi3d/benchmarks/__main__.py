"""``python -m hfgi3d.benchmarks {celeba,synthetic,aggregate} ...`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hfgi3d.benchmarks.aggregate import CELEBA_COLUMNS, csv_table, markdown_table, summarize
from hfgi3d.benchmarks.celeba import PAPER_IMAGES
from hfgi3d.benchmarks.runner import Job, run
from hfgi3d.benchmarks.store import MERGED_FILE, read_rows
from hfgi3d.cli import OneLineErrorParser
from hfgi3d.errors import InputError
from hfgi3d.metrics.registry import CELEBA, SYNTHETIC, table_columns
from hfgi3d.presets import preset_path

BASE_PRESET = "hfgi3d.yaml"
METHODS = {
    "hfgi3d": (),
    "hfgi3d_official": ("hfgi3d_official.yaml",),
    "pti": ("baseline/pti.yaml",),
    "ablation_no_occluded": ("ablation/no_occluded.yaml",),
    "ablation_no_visible_texture": ("ablation/no_visible_texture.yaml",),
}
"""Method name → the overrides applied after the paper's preset, as ``fit --config`` takes them."""
SYNTHETIC_CI_PROFILE = "benchmark/synthetic_ci.yaml"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _presets(method: str) -> list[str]:
    """The method's ``--config`` files, in order: the paper's preset, then its overrides."""
    return [str(preset_path(name)) for name in (BASE_PRESET, *METHODS[method])]


def _fit_args(args: argparse.Namespace) -> list[str]:
    """``fit`` options every job of the run adds after its presets and the profile."""
    return [] if args.precision is None else ["--trainer.precision", args.precision]


def log_to_wandb(folder: Path, group: str, columns: Sequence[str], rows: list[dict], summary: dict) -> None:
    """One ``aggregate`` run in the benchmark's W&B group: the summary table and every row."""
    import wandb

    from hfgi3d.callbacks.wandb_logging import resolve_mode

    run = wandb.init(project="hfgi3d", group=group, job_type="aggregate", name=f"{group}/summary",
                     dir=str(folder), mode=resolve_mode(None))  # fmt: skip
    shown = [c for c in columns if any(c in entry for entry in summary.values())]
    table = wandb.Table(columns=["method", "n", *[f"{c}_{s}" for c in shown for s in ("mean", "std")]])
    for method, entry in summary.items():
        table.add_data(method, entry["n"], *[v for c in shown for v in (entry[c][:2] if c in entry else (None, None))])
    keys = sorted({key for row in rows for key in row if not isinstance(row[key], dict | list)})
    run.log(
        {
            "benchmark/summary": table,
            "benchmark/rows": wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in rows]),
        }
    )
    run.finish()


def write_summary(
    folder: Path, columns: Sequence[str], header: str = "", paper: bool = True, wandb_group: str | None = None
) -> str:
    """``summary.md`` and ``summary.csv`` of ``results.jsonl`` (error rows left out, counted)."""
    rows = read_rows(folder / MERGED_FILE)
    good = [row for row in rows if "error" not in row]
    summary = summarize(good, columns)
    if wandb_group:
        log_to_wandb(folder, wandb_group, columns, good, summary)
    table = markdown_table(summary, columns, paper=paper)
    errors = len(rows) - len(good)
    text = header + table + (f"\n{errors} job(s) failed; their rows hold an `error`.\n" if errors else "")
    (folder / "summary.md").write_text(text)
    (folder / "summary.csv").write_text(csv_table(summary, columns))
    return text


def celeba(args: argparse.Namespace) -> int:
    from hfgi3d.benchmarks.celeba import MissingInputError, make_job_fn, resolve_inputs, sample_images, write_image_list

    try:
        data, generator = resolve_inputs(args.data, args.generator)
        photos = sample_images(data, args.images, args.seed)
    except (MissingInputError, ValueError) as error:
        print(f"cannot run the CelebA-HQ benchmark:\n{error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    folder: Path = args.output_dir
    write_image_list(folder / "images.txt", photos, args.seed)
    jobs = [
        Job(photo.stem, method, {"presets": _presets(method), "photo": str(photo), "args": _fit_args(args)})
        for photo in photos
        for method in args.methods
    ]
    job_fn = make_job_fn(generator, args.profile, folder, args.wandb)
    rows = run(jobs, folder, job_fn, args.accelerator, args.devices, args.num_nodes, args.retry_errors, args.batch_size)
    if not rows:  # ranks other than 0
        return 0
    command = " ".join(["python -m hfgi3d.benchmarks", *current_spellings(sys.argv[1:])])
    header = (
        f"CelebA-HQ benchmark: `{command}`\n\n{len(photos)} images × {len(args.methods)} methods, generator "
        f"`{generator}`; wall time {time.perf_counter() - started:.0f} s. Paper rows: Xie et al. 2023, Table 1/3.\n\n"
    )
    print(write_summary(folder, CELEBA_COLUMNS, header, wandb_group=args.wandb))
    return 0


def synthetic(args: argparse.Namespace) -> int:
    from hfgi3d.benchmarks.synthetic import PAINTS, SYNTHETIC_COLUMNS, make_job_fn, prepare
    from hfgi3d.losses import LPIPS

    started = time.perf_counter()
    folder: Path = args.output_dir
    data = folder / "data"
    ids = prepare(args.generator, args.seed, args.images, data, PAINTS[args.paint])
    # Every fit opens the generator the images were made with: the same spec and seed.
    fit_args = [*_fit_args(args), "--model.seed", str(args.seed)]
    jobs = [
        Job(image_id, method, {"presets": _presets(method), "args": fit_args})
        for image_id in ids
        for method in args.methods
    ]
    lpips = LPIPS(net="alex", weights=args.lpips_weights_alex)
    job_fn = make_job_fn(
        args.generator, args.profile, data, folder / "runs", lpips, args.wandb, args.curves, args.keep_generators
    )
    rows = run(jobs, folder, job_fn, args.accelerator, args.devices, args.num_nodes, args.retry_errors, args.batch_size)
    if not rows:  # ranks other than 0
        return 0
    command = " ".join(["python -m hfgi3d.benchmarks", *current_spellings(sys.argv[1:])])
    header = (
        f"Synthetic benchmark: `{command}`\n\n{len(ids)} images × {len(args.methods)} methods, generator "
        f"`{args.generator}`, profile `{args.profile}`; wall time {time.perf_counter() - started:.0f} s.\n\n"
    )
    # The paper has no synthetic table: no paper rows.
    print(write_summary(folder, SYNTHETIC_COLUMNS, header, paper=False, wandb_group=args.wandb))
    return 0


def aggregate(args: argparse.Namespace) -> int:
    folder = args.folder
    if not (folder / MERGED_FILE).is_file():
        print(f"error: no {MERGED_FILE} in {folder}: run a benchmark first", file=sys.stderr)
        return 2
    columns = args.columns or table_columns(args.table)
    print(write_summary(folder, columns, paper=args.table == CELEBA))
    return 0


FORMER_SPELLINGS = {
    "--out": "--output_dir",
    "--num-nodes": "--num_nodes",
    "--retry-errors": "--retry_errors",
    "--batch-size": "--batch_size",
    "--keep-generators": "--keep_generators",
    "--lpips-weights-alex": "--lpips_weights_alex",
}
"""Options as they were spelt before the benchmarks took ``fit``'s convention (snake_case, ``--output_dir``):
the command lines recorded with older results still run."""


def current_spellings(argv: Sequence[str]) -> list[str]:
    """``argv`` with :data:`FORMER_SPELLINGS` replaced (``--out X`` and ``--out=X`` alike)."""
    current = []
    for word in argv:
        name, equals, value = word.partition("=")
        current.append(FORMER_SPELLINGS[name] + equals + value if name in FORMER_SPELLINGS else word)
    return current


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m hfgi3d.benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    parallel = OneLineErrorParser(add_help=False)
    parallel.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parallel.add_argument("--devices", type=int, default=1, help="processes per node (one per GPU, or CPU processes)")
    parallel.add_argument("--num_nodes", type=int, default=1, help="nodes the processes are spread over")
    parallel.add_argument("--retry_errors", action="store_true", help="run failed jobs again")
    parallel.add_argument(
        "--batch_size", type=_positive, default=1, help="photos of one method inverted together in one fit (default 1)"
    )
    parallel.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parallel.add_argument(
        "--precision", default=None, help="trainer.precision of every fit, e.g. bf16-mixed (default: the presets')"
    )
    parallel.add_argument(
        "--wandb", metavar="GROUP", default=None, help="log every run and the summary to this W&B group"
    )

    cel = commands.add_parser("celeba", parents=[parallel], help="the paper's protocol on CelebA-HQ")
    cel.add_argument(
        "--output_dir", type=Path, default=Path("benchmarks/results/celeba"), help="benchmark folder (resumes)"
    )
    cel.add_argument("--data", default=None, help="CelebA-HQ image folder (default: $HFGI3D_CELEBAHQ)")
    cel.add_argument("--generator", default=None, help="EG3D ffhq512-128.pkl or .pt (default: $HFGI3D_EG3D)")
    cel.add_argument("--images", type=int, default=PAPER_IMAGES, help=f"photos sampled (the paper: {PAPER_IMAGES})")
    cel.add_argument("--seed", type=int, default=0)
    cel.add_argument("--profile", default=None, help="config applied after each preset (default: none)")
    cel.set_defaults(run=celeba)

    synth = commands.add_parser("synthetic", parents=[parallel], help="ground-truth benchmark (no data needed)")
    synth.add_argument("--output_dir", type=Path, required=True, help="benchmark folder (resumes if it exists)")
    synth.add_argument("--generator", default="tiny", help="tiny, a GeneratorConfig .yaml, an EG3D .pkl or .pt")
    synth.add_argument(
        "--profile",
        default=str(preset_path(SYNTHETIC_CI_PROFILE)),
        help="config applied after each preset (CI size); 'none' runs the presets as they are",
    )
    synth.add_argument("--images", type=int, default=3)
    synth.add_argument(
        "--paint", choices=("fine", "bold"), default="fine",
        help="paint sizes: fine (thin strokes, the CI size) or bold (about 4 texels of a 64² tri-plane wide)",
    )  # fmt: skip
    synth.add_argument(
        "--curves", type=int, default=0, metavar="N",
        help="log input-view, novel-view and paint PSNR against the ground truth every N steps (0: off)",
    )  # fmt: skip
    synth.add_argument(
        "--keep_generators", action="store_true",
        help="keep each run's tuned generator.pt (fp32) for editing it afterwards "
        "(benchmarks/groundtruth_editability.py); by default it is deleted once scored",
    )  # fmt: skip
    synth.add_argument(
        "--lpips_weights_alex", default=None, help="LPIPS-AlexNet weights file for the novel-view scores"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=synthetic)

    agg = commands.add_parser("aggregate", help="mean ± std table of a benchmark folder's results.jsonl")
    agg.add_argument("folder", type=Path, help="a benchmark's --output_dir (holding results.jsonl)")
    agg.add_argument(
        "--table", choices=(CELEBA, SYNTHETIC), default=CELEBA,
        help="the columns (and, for celeba, the paper's rows) of that benchmark's table (default: celeba)",
    )  # fmt: skip
    agg.add_argument("--columns", nargs="+", default=None, help="these metric keys instead of --table's columns")
    agg.set_defaults(run=aggregate)

    try:
        args = parser.parse_args(current_spellings(sys.argv[1:] if argv is None else argv))
    except InputError as error:  # a bad command line: one line, as python -m hfgi3d gives it
        print(f"error: {error}", file=sys.stderr)
        return 2
    if getattr(args, "profile", None) == "none":
        args.profile = None
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
