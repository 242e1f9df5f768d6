"""Time the Poisson blending of the pseudo views: this commit's solver against an older commit's.

    python benchmarks/poisson_speed.py --views 16 --size 512 --against dde7151 [--device cuda]

Blends ``--views`` random RGB views at ``--size``² under masks shaped like visibility masks (a
wavy vertical boundary and a hole, ~55 % visible) with each solver at the paper preset's budget
(2000 iterations, relative residual 1e-5), once to warm up and then timed, and reports the
seconds of each and how far apart their blends are (max |difference|, in [-1, 1] units). The
older solver is read from ``git show GITREF:hfgi3d/geometry.py`` and run here, each with its own
default chunking of the images.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hfgi3d.geometry import poisson_blend

REPO = Path(__file__).resolve().parents[1]


def _masks(views: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``V×1×S×S`` masks: visible left of a wavy boundary, with a round occluded hole."""
    coords = (torch.arange(size) + 0.5) / size
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    masks = []
    for _ in range(views):
        phase, edge, cx, cy = torch.rand(4, generator=generator).tolist()
        boundary = 0.45 + 0.25 * edge + 0.05 * torch.sin(2 * math.pi * (3 * rows + phase))
        hole = (rows - 0.3 - 0.4 * cy).square() + (cols - 0.2 - 0.2 * cx).square() < 0.01
        masks.append(((cols < boundary) & ~hole).float())
    return torch.stack(masks)[:, None]


def _old_solver(ref: str) -> Any:
    """``poisson_blend`` of commit ``ref``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:hfgi3d/geometry.py"], check=True, capture_output=True, text=True
    ).stdout
    folder = Path(tempfile.mkdtemp())
    (folder / "old_geometry.py").write_text(source)
    spec = importlib.util.spec_from_file_location("old_geometry", folder / "old_geometry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.poisson_blend


def _time(solver: Any, args: tuple[torch.Tensor, ...], device: torch.device) -> tuple[float, torch.Tensor]:
    solver(*args, 2000, 1e-5)  # warm-up (CUDA kernels, FFT plans)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    out = solver(*args, 2000, 1e-5)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--against", default=None, metavar="GITREF")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    visible = (torch.rand(args.views, 3, args.size, args.size, generator=generator) * 2 - 1).to(device)
    occluded = (torch.rand(args.views, 3, args.size, args.size, generator=generator) * 2 - 1).to(device)
    masks = _masks(args.views, args.size, generator).to(device)
    seconds, blended = _time(poisson_blend, (visible, occluded, masks), device)
    result: dict[str, Any] = {
        "command": "python benchmarks/poisson_speed.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "views": args.views,
        "size": args.size,
        "visible_fraction": float(masks.mean()),
        "seconds": seconds,
    }
    if args.against:
        old_seconds, old_blended = _time(_old_solver(args.against), (visible, occluded, masks), device)
        result[f"seconds_{args.against}"] = old_seconds
        result["speedup"] = old_seconds / seconds
        result["max_abs_difference"] = float((blended - old_blended).abs().max())
    print(json.dumps(result, indent=2))
    if args.out is not None:
        from hfgi3d.io import write_json_atomic  # this checkout's (a measured old commit may predate it)

        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
