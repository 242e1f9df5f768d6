"""Editability on ground truth: is an inverted result as editable as the generator it came from?

    python benchmarks/groundtruth_editability.py FOLDER [--samples 2000] [--top 200] [--strength 3]

For a synthetic (ground-truth) benchmark FOLDER (``python -m hfgi3d.benchmarks synthetic --output_dir
FOLDER``), with the generator every image was made with and every method started from:

1. a ``mean_luma`` direction is fitted on that generator (InterFaceGAN: ``--samples`` frontal
   renders, the ``--top`` brightest and darkest, a linear SVM; :func:`hfgi3d.editing.direction_fit.fit_direction`),
   into ``FOLDER/editability/mean_luma.pt``;
2. per image, the change of the input view's mean luma between strengths ``-s`` and ``+s``
   (``--strength``) is measured three ways:

   * ``truth``: the image's true latent in the original generator;
   * ``<method> stage 1``: the method's stage-1 latent ``w_e`` in the original generator (before
     stage 2 tunes anything);
   * ``<method>``: ``python -m hfgi3d edit`` on the method's run (its tuned generator and final
     latent), read back from the edit's ``input_view_<strength>.png``.

Writes ``FOLDER/editability.md``: per method the ratio of its luma change to the truth's (1.0: as
editable as the generator itself; mean and Student-t 95 % interval over the images) and the mean
luma changes themselves, and ``FOLDER/editability.json`` with every value.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from groundtruth_figures import mean_and_half_width  # beside this script (benchmarks/)
from PIL import Image

from hfgi3d.editing.direction_fit import fit_direction
from hfgi3d.editing.directions import load_direction
from hfgi3d.editing.edit import edit, open_run, strength_tag
from hfgi3d.editing.scorers import mean_luma
from hfgi3d.generator import open_generator

EDIT_NAME = "editability_mean_luma"


def interval(values: list[float]) -> str:
    """``mean [low, high]`` (Student-t 95 %), or the mean alone for fewer than 2 values."""
    if len(values) < 2:
        return f"{statistics.mean(values):.3f}"
    mean, half = mean_and_half_width(values)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def png_luma(path: Path) -> float:
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32))
    return float(mean_luma(pixels.permute(2, 0, 1)[None] / 127.5 - 1))


def luma_change(generator, ws: torch.Tensor, c25: torch.Tensor, direction, strength: float) -> float:
    """Mean luma of the render at ``c25`` with ``ws + s·d`` minus that with ``ws − s·d``."""
    lumas = []
    with torch.no_grad():
        for signed in (-strength, strength):
            image = generator.synthesis(direction.apply(ws, signed), c25, deterministic=True)["image"]
            lumas.append(float(mean_luma(image.clamp(-1, 1))))
    return lumas[1] - lumas[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--samples", type=int, default=2000, help="renders scored to fit the direction")
    parser.add_argument("--top", type=int, default=200, help="brightest and darkest renders the SVM separates")
    parser.add_argument("--strength", type=float, default=3.0, help="the edit strength s (applied at -s and +s)")
    args = parser.parse_args()
    folder: Path = args.folder
    runs = sorted(path.parent for path in (folder / "runs").glob("*/*/latent.pt"))
    if not runs:
        raise SystemExit(f"{folder}/runs holds no finished run (runs/<method>/<image>/latent.pt)")
    first = open_run(runs[0])
    spec, seed = str(first.required("model.generator")), int(first.setting("model.seed", 0))
    direction_path = folder / "editability" / "mean_luma.pt"
    direction_path.parent.mkdir(exist_ok=True)
    metadata = fit_direction(spec, "mean_luma", "mean_luma", args.samples, args.top, direction_path,
                             seed=seed, overwrite=True)  # fmt: skip
    generator = open_generator(spec, seed).eval()
    direction = load_direction(direction_path, generator.config.w_dim)
    s = args.strength
    truth: dict[str, float] = {}
    changes: dict[str, dict[str, float]] = {}
    for run_dir in runs:
        method, image_id = run_dir.parent.name, run_dir.name
        run = open_run(run_dir)
        if str(run.required("model.generator")) != spec or int(run.setting("model.seed", 0)) != seed:
            raise SystemExit(f"{run_dir} was fitted from another generator than {runs[0]}")
        if image_id not in truth:
            case = torch.load(folder / "data" / f"{image_id}.pt", weights_only=True)
            truth[image_id] = luma_change(generator, case["ws"], case["c_input"], direction, s)
        c25 = run.latent["c25"]
        ws_estimate = run.latent["ws_estimate"]
        changes.setdefault(f"{method} stage 1", {})[image_id] = luma_change(generator, ws_estimate, c25, direction, s)
        out = edit(run_dir, direction_path, [-s, s], name=EDIT_NAME, overwrite=True, progress=False)
        low, high = (png_luma(out / f"input_view_{strength_tag(value)}.png") for value in (-s, s))
        changes.setdefault(method, {})[image_id] = high - low
        print(f"{method:>20} {image_id}: luma change {high - low:+.3f} (truth {truth[image_id]:+.3f})")
    lines = [
        f"Editability on ground truth: `mean_luma` direction (SVM accuracy {metadata['accuracy']:.2f},"
        f" {args.samples} samples, top {args.top}) at ±{s:g}; luma change of the input view (0–1 scale) and its"
        " ratio to the true latent's in the original generator (mean [95 % interval] over the images).\n",
        "| result | n | luma change | ratio to truth |",
        "|---|---|---|---|",
        f"| truth (true latent, original generator) | {len(truth)} | {interval(list(truth.values()))} | 1 |",
    ]
    for name in sorted(changes, key=lambda name: (name.endswith("stage 1"), name)):
        values = changes[name]
        ratios = [values[i] / truth[i] for i in values]
        lines.append(f"| {name} | {len(values)} | {interval(list(values.values()))} | {interval(ratios)} |")
    (folder / "editability.md").write_text("\n".join(lines) + "\n")
    record = {"direction": metadata, "strength": s, "truth": truth, "changes": changes}
    (folder / "editability.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
