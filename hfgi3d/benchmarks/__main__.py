"""``python -m hfgi3d.benchmarks {synthetic,aggregate} ...`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hfgi3d.benchmarks.aggregate import CELEBA_COLUMNS, csv_table, markdown_table, summarize
from hfgi3d.benchmarks.runner import Job, run
from hfgi3d.benchmarks.store import MERGED_FILE, read_rows

METHODS = ("hfgi3d", "hfgi3d_official", "pti", "ablation_no_occluded", "ablation_no_visible_texture")
"""Method name → preset ``configs/<name>.yaml``."""
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _preset(method: str) -> Path:
    path = CONFIGS / f"{method}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no preset for method {method!r}: {path} does not exist")
    return path


def write_summary(folder: Path, columns: Sequence[str], header: str = "", paper: bool = True) -> str:
    """``summary.md`` and ``summary.csv`` of ``results.jsonl`` (error rows left out, counted)."""
    rows = read_rows(folder / MERGED_FILE)
    good = [row for row in rows if "error" not in row]
    summary = summarize(good, columns)
    table = markdown_table(summary, columns, paper=paper)
    errors = len(rows) - len(good)
    text = header + table + (f"\n{errors} job(s) failed; their rows hold an `error`.\n" if errors else "")
    (folder / "summary.md").write_text(text)
    (folder / "summary.csv").write_text(csv_table(summary, columns))
    return text


def synthetic(args: argparse.Namespace) -> int:
    from hfgi3d.benchmarks.synthetic import SYNTHETIC_COLUMNS, make_job_fn, prepare
    from hfgi3d.losses import LPIPS

    started = time.perf_counter()
    folder: Path = args.out
    data = folder / "data"
    ids = prepare(args.generator, args.seed, args.images, data)
    jobs = [Job(image_id, method, {"preset": str(_preset(method))}) for image_id in ids for method in args.methods]
    job_fn = make_job_fn(args.generator, args.profile, data, folder / "runs", LPIPS(net="alex"))
    run(jobs, folder, job_fn, args.accelerator, args.devices, args.num_nodes, args.retry_errors)
    command = " ".join(["python -m hfgi3d.benchmarks", *sys.argv[1:]])
    header = (
        f"Synthetic benchmark: `{command}`\n\n{len(ids)} images × {len(args.methods)} methods, generator "
        f"`{args.generator}`, profile `{args.profile}`; wall time {time.perf_counter() - started:.0f} s.\n\n"
    )
    print(write_summary(folder, SYNTHETIC_COLUMNS, header, paper=False))  # the paper has no synthetic table
    return 0


def aggregate(args: argparse.Namespace) -> int:
    folder = args.folder
    if not (folder / MERGED_FILE).is_file():
        print(f"no {MERGED_FILE} in {folder}: run a benchmark first", file=sys.stderr)
        return 2
    columns = args.columns or CELEBA_COLUMNS
    print(write_summary(folder, columns))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hfgi3d.benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    parallel = argparse.ArgumentParser(add_help=False)
    parallel.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parallel.add_argument("--devices", type=int, default=1, help="processes per node (one per GPU, or CPU processes)")
    parallel.add_argument("--num-nodes", type=int, default=1)
    parallel.add_argument("--retry-errors", action="store_true", help="run failed jobs again")
    parallel.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)

    synth = commands.add_parser("synthetic", parents=[parallel], help="ground-truth benchmark (no data needed)")
    synth.add_argument("--out", type=Path, required=True, help="benchmark folder (resumes if it exists)")
    synth.add_argument("--generator", default="tiny", help="tiny, a GeneratorConfig .yaml, an EG3D .pkl or .pt")
    synth.add_argument(
        "--profile",
        default=str(CONFIGS / "benchmark" / "synthetic_ci.yaml"),
        help="config applied after each preset (CI size); 'none' runs the presets as they are",
    )
    synth.add_argument("--images", type=int, default=3)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=synthetic)

    agg = commands.add_parser("aggregate", help="mean ± std table of a benchmark folder's results.jsonl")
    agg.add_argument("folder", type=Path)
    agg.add_argument("--columns", nargs="+", default=None)
    agg.set_defaults(run=aggregate)

    args = parser.parse_args(argv)
    if getattr(args, "profile", None) == "none":
        args.profile = None
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
