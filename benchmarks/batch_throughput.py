"""Photos per hour of batched inversion (``fit --data.images --data.batch_size N``).

    python benchmarks/batch_throughput.py --generator tiny256 --batch-size 1 4 8 --device cpu \
        --out benchmarks/results/batch_throughput_cpu_tiny256.json

For each batch size N, one ``python -m hfgi3d fit`` process inverts N copies of the bundled photo
(with its camera) in one batch, with the paper's preset and a shortened schedule (``--steps``
estimate / occluded / pseudo-multiview steps, ``--num-views`` pseudo views), then writes every
output (no mesh or orbit video) and evaluates. Reported per N: the process's wall time and the
fit's own time (``metrics.json``'s ``seconds``: the three stages and the hand-over), photos per
hour from each, and the peak memory per photo (CPU: the process's peak RSS / N; GPU: peak CUDA
memory / N). Each N runs in its own process, so peaks do not carry over. Weights are random:
speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GENERATORS = {
    "tiny": "tiny",
    "tiny256": None,  # configs/generator/tiny.yaml with 256² planes, written to the scratch folder
    "ffhq512": str(REPO / "configs" / "generator" / "ffhq512.yaml"),
}
CHILD = """
import json, resource, sys, torch
from hfgi3d.cli import main
code = main(sys.argv[2:])
peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if torch.cuda.is_available() and torch.cuda.is_initialized():
    peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
open(sys.argv[1], "w").write(json.dumps({"code": code, **peak}))
"""


def _generator(name: str, scratch: Path) -> str:
    spec = GENERATORS[name]
    if spec is not None:
        return spec
    import yaml

    config = yaml.safe_load((REPO / "configs" / "generator" / "tiny.yaml").read_text())
    config["plane_resolution"] = 256
    path = scratch / "tiny256.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _photos(count: int, folder: Path) -> Path:
    """``count`` copies of the bundled photo, each with its camera beside it."""
    sample = REPO / "hfgi3d" / "assets" / "sample_face.png"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shutil.copy(sample, folder / f"photo_{index:03d}.png")
        shutil.copy(sample.with_suffix(".json"), folder / f"photo_{index:03d}.json")
    return folder


def measure(args: argparse.Namespace, batch_size: int, scratch: Path) -> dict[str, Any]:
    estimate, occluded, tuning = args.steps
    photos = _photos(batch_size, scratch / f"photos_{batch_size}")
    out = scratch / f"out_{batch_size}"
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    fit = [
        "fit", "--config", str(REPO / "configs" / "hfgi3d.yaml"),
        "--model.generator", _generator(args.generator, scratch),
        "--model.estimate.steps", str(estimate), "--model.occluded.steps", str(occluded),
        "--model.pseudo_multiview.steps", str(tuning), "--model.w_avg_samples", str(args.w_avg_samples),
        "--model.photos_per_call", str(args.photos_per_call),
        "--data.images", str(photos), "--data.batch_size", str(batch_size), "--data.num_views", str(args.num_views),
        "--data.pseudo_views.poisson_iterations", str(args.poisson_iterations),
        "--outputs.orbit_frames", "0", "--outputs.mesh_resolution", "0", "--outputs.save_generator", "none",
        "--evaluation.every_n_steps", "0", "--evaluation.metrics.pose_accuracy", "false",
        "--trainer.accelerator", accelerator, "--trainer.precision", args.precision,
        "--trainer.enable_progress_bar", "false", "--output_dir", str(out),
    ]  # fmt: skip
    if args.generator != "ffhq512":
        fit += ["--model.loss.lpips_resize", "null"]
    report = scratch / f"peak_{batch_size}.json"
    started = time.perf_counter()
    log = scratch / f"fit_{batch_size}.log"
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-c", CHILD, str(report), *fit], cwd=REPO, stdout=handle, stderr=handle)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"fit failed for batch size {batch_size}:\n{log.read_text()[-3000:]}")
    peak = json.loads(report.read_text())
    if peak["code"] != 0:
        raise RuntimeError(f"fit exited with {peak['code']} for batch size {batch_size}")
    seconds = json.loads((out / "photo_000" / "metrics.json").read_text())["seconds"]
    memory = peak.get("cuda_mb", peak["rss_mb"])
    return {
        "batch_size": batch_size,
        "wall_s": wall,
        "fit_s": seconds,
        "photos_per_hour_wall": 3600 * batch_size / wall,
        "photos_per_hour_fit": 3600 * batch_size / seconds,
        "peak_memory_mb": memory,
        "peak_memory_per_photo_mb": memory / batch_size,
        "memory_kind": "cuda" if "cuda_mb" in peak else "rss",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", choices=sorted(GENERATORS), default="tiny256")
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--steps", nargs=3, type=int, default=[20, 10, 40], metavar=("ESTIMATE", "OCCLUDED", "TUNE"))
    parser.add_argument("--num-views", type=int, default=4)
    parser.add_argument("--poisson-iterations", type=int, default=200)
    parser.add_argument("--w-avg-samples", type=int, default=100)
    parser.add_argument("--photos-per-call", type=int, default=0, help="model.photos_per_call (0: by device)")
    parser.add_argument("--precision", default="32-true", help="trainer.precision, e.g. bf16-mixed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()

    import torch

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        print(f"device: {device}, torch {torch.__version__}, {args.generator}, steps {args.steps}", flush=True)
        print("| batch | wall s | fit s | photos/h (wall) | photos/h (fit) | peak MB | MB per photo |")
        print("|---|---|---|---|---|---|---|", flush=True)
        for batch_size in args.batch_size:
            row = measure(args, batch_size, Path(folder))
            rows.append(row)
            cells = [f"{row['wall_s']:.1f}", f"{row['fit_s']:.1f}", f"{row['photos_per_hour_wall']:.0f}"]
            cells += [f"{row['photos_per_hour_fit']:.0f}", f"{row['peak_memory_mb']:.0f}"]
            cells += [f"{row['peak_memory_per_photo_mb']:.0f}"]
            print(f"| {batch_size} | {' | '.join(cells)} |", flush=True)
    if args.out:
        from hfgi3d.io import write_json_atomic

        write_json_atomic(
            args.out,
            {"device": device, "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)}, "rows": rows},
        )


if __name__ == "__main__":
    main()
