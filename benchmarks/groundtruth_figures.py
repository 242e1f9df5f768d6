"""Figures and paired statistics of a synthetic (ground-truth) benchmark folder.

    python benchmarks/groundtruth_figures.py FOLDER [--images 3] [--methods pti hfgi3d]

Reads what ``python -m hfgi3d.benchmarks synthetic --output_dir FOLDER [--curves N]`` wrote and writes, into
FOLDER:

* ``curves.png``: the paper's Figure 2 on ground truth: input-view, novel-view and paint PSNR over
  the steps of each method's fit (mean over the images; from each run's ``metrics.csv``, logged by
  ``--curves``); the dashed line is where stage 2 (tuning G) starts.
* ``side_by_side.png``: for the first ``--images`` images, a row with the painted input and the 5
  ground-truth novel views, then a row of each method's novel views, labelled (from each run's
  ``novel_vs_truth.png``).
* ``paired.md``: for every method, the per-image differences against ``pti`` and against ``hfgi3d``
  (mean and Student-t 95 % interval over the images both have), per metric; times only between
  rows run on as many CPU threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import stats

CURVES = (("truth/input_psnr", "input view PSNR (dB)"), ("truth/novel_psnr", "novel views PSNR (dB)"),
          ("truth/paint_psnr", "paint in novel views PSNR (dB)"))  # fmt: skip
PAIRED_KEYS = ("novel_psnr", "novel_ssim", "novel_lpips", "paint_psnr", "psnr", "seconds")
"""Metrics of the paired table (``psnr``: the input view)."""
REFERENCES = ("pti", "hfgi3d")


def read_rows(folder: Path) -> dict[str, dict[str, dict]]:
    """method → image id → its row of ``results.jsonl`` (error rows left out)."""
    rows: dict[str, dict[str, dict]] = {}
    for line in (folder / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "error" not in row:
            rows.setdefault(row["method"], {})[row["image_id"]] = row
    return rows


def mean_and_half_width(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` (at least 2) and the half-width of its Student-t 95 % interval."""
    mean = statistics.mean(values)
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _same_threads(a: dict, b: dict) -> bool:
    """Whether two rows' times can be compared: both ran on the same number of CPU threads, or both
    come from before the runner recorded it."""
    return a.get("cpu_threads") == b.get("cpu_threads")


def paired(rows: dict[str, dict[str, dict]], methods: list[str]) -> str:
    """Markdown: mean difference and 95 % interval of each method against each reference, per metric."""
    lines = []
    for reference in REFERENCES:
        if reference not in rows:
            continue
        lines += [
            f"\n### Against {reference} (method − {reference}; mean [95 % interval], n images)\n",
            "| method | n | " + " | ".join(PAIRED_KEYS) + " |",
            "|---|---|" + "---|" * len(PAIRED_KEYS),
        ]
        for method in methods:
            if method == reference or method not in rows:
                continue
            common = sorted(set(rows[method]) & set(rows[reference]))
            cells = []
            for key in PAIRED_KEYS:
                d = [rows[method][i][key] - rows[reference][i][key] for i in common
                     if rows[method][i].get(key) is not None and rows[reference][i].get(key) is not None
                     and (key != "seconds" or _same_threads(rows[method][i], rows[reference][i]))]  # fmt: skip
                if len(d) < 2:
                    cells.append("—")
                    continue
                mean, half = mean_and_half_width(d)
                cells.append(f"{mean:+.3g} [{mean - half:+.3g}, {mean + half:+.3g}]")
            lines.append(f"| {method} | {len(common)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metrics_csv(run: Path) -> Path | None:
    """A run's ``metrics.csv`` (Lightning's CSV logger writes ``lightning_logs/version_<n>/metrics.csv``
    under the run folder; the newest version if a run was repeated)."""
    found = sorted(run.rglob("metrics.csv"), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def read_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``truth/*`` of a run's ``metrics.csv``: key → [(step, value)]."""
    found: dict[str, list[tuple[int, float]]] = {key: [] for key, _ in CURVES}
    path = metrics_csv(run)
    if path is None:
        return found
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for key in found:
                if row.get(key):
                    found[key].append((int(row["step"]), float(row[key])))
    return found


def stage_two_start(run: Path) -> int | None:
    """The first step of stage 2 in a run (estimate + occluded steps of its ``config.yaml``)."""
    import yaml

    from hfgi3d.stages import upgrade_model_config

    path = run / "config.yaml"
    if not path.is_file():
        return None
    model = yaml.safe_load(path.read_text())["model"]
    upgrade_model_config(model)  # a run written before the stage settings had their groups
    return int(model["estimate"]["steps"]) + int(model["occluded"]["steps"])


def draw_curves(folder: Path, methods: list[str], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    drawn = False
    for method in methods:
        runs = sorted(p for p in (folder / "runs" / method).glob("*") if metrics_csv(p) is not None)
        if not runs:
            continue
        for axis, (key, title) in zip(axes, CURVES, strict=True):
            series = [dict(read_curves(run)[key]) for run in runs]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            mean = [statistics.mean(s[step] for s in series) for step in steps]
            (line,) = axis.plot(steps, mean, label=f"{method} (n={len(series)})")
            start = stage_two_start(runs[0])
            if start is not None:
                axis.axvline(start, color=line.get_color(), linestyle="--", linewidth=0.8)
            axis.set_title(title)
            axis.set_xlabel("step")
            drawn = True
    if drawn:
        axes[0].legend()
        figure.tight_layout()
        figure.savefig(out, dpi=110)
    plt.close(figure)
    return drawn


def _label(text: str, size: int) -> np.ndarray:
    """A white ``size×size`` RGB tile with ``text`` written on it."""
    from PIL import ImageDraw

    tile = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(tile).text((4, size // 2 - 6), text, fill="black")
    return np.asarray(tile)


def side_by_side(folder: Path, methods: list[str], images: int, out: Path) -> bool:
    """Rows per image: input + ground truth; then one row per method (5 novel views each)."""
    ids = sorted(p.stem for p in (folder / "data").glob("*.png"))[:images]
    blocks = []
    for image_id in ids:
        grids = {m: folder / "runs" / m / image_id / "novel_vs_truth.png" for m in methods}
        grids = {m: p for m, p in grids.items() if p.is_file()}
        if not grids:
            continue
        first = np.asarray(Image.open(next(iter(grids.values()))))
        height = first.shape[0] // 2
        photo = np.asarray(Image.open(folder / "data" / f"{image_id}.png").resize((height, height)))
        rows = [np.concatenate([photo, first[:height]], axis=1)]  # input, then the truth
        rows += [np.concatenate([_label(method, height), np.asarray(Image.open(p))[height:]], axis=1)
                 for method, p in grids.items()]  # fmt: skip
        blocks.append(np.concatenate([*rows, np.full((8, rows[0].shape[1], 3), 255, np.uint8)], axis=0))
        print(f"{image_id}: rows input+truth, " + ", ".join(grids))
    if not blocks:
        return False
    Image.fromarray(np.concatenate(blocks, axis=0)).save(out)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=3, help="images in side_by_side.png")
    parser.add_argument("--methods", nargs="+", default=None, help="methods drawn (default: all in the folder)")
    args = parser.parse_args()
    rows = read_rows(args.folder)
    methods = args.methods or sorted(rows)
    (args.folder / "paired.md").write_text(paired(rows, methods))
    print((args.folder / "paired.md").read_text())
    if draw_curves(args.folder, methods, args.folder / "curves.png"):
        print(f"wrote {args.folder / 'curves.png'}")
    if side_by_side(args.folder, methods, args.images, args.folder / "side_by_side.png"):
        print(f"wrote {args.folder / 'side_by_side.png'}")


if __name__ == "__main__":
    main()
