"""Time the Poisson blending of the pseudo views: this commit's solver against an older commit's.

    python benchmarks/poisson_speed.py --views 16 --size 512 --against dde7151 [--device cuda]

Blends ``--views`` random RGB views at ``--size``² under masks shaped like visibility masks (a
wavy vertical boundary and a hole, ~55 % visible) with each solver at the paper preset's budget
(2000 iterations, relative residual 1e-5), once to warm up and then timed, and reports the
seconds of each and how far apart their blends are (max |difference|, in [-1, 1] units). The
older solver is read from ``git show GITREF:hfgi3d/geometry.py`` and run here, each with its own
default chunking of the images. ``--multigrid`` also times an algebraic alternative to the
shipped geometric multigrid: pyamg's smoothed-aggregation AMG as the preconditioner of CG, on the
CPU, per view.
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


def _multigrid_blend(
    visible: torch.Tensor, occluded: torch.Tensor, mask: torch.Tensor, iterations: int, tol: float
) -> torch.Tensor:
    """The same equations as :func:`poisson_blend`, solved by conjugate gradients preconditioned with
    pyamg's smoothed-aggregation algebraic multigrid (one V-cycle per iteration), on the CPU, one
    sparse system per view (its three channels share the hierarchy, which is built per mask and
    timed with the solve)."""
    import numpy as np
    import pyamg
    import scipy.sparse as sp

    from hfgi3d.geometry import _neighbour_sum

    out = occluded.clone()
    for view in range(len(visible)):
        inside = mask[view, 0] > 0.5
        height, width = inside.shape
        index = torch.full((height, width), -1, dtype=torch.long)
        index[inside] = torch.arange(int(inside.sum()))
        rows, cols = [], []
        for shift_r, shift_c in ((0, 1), (1, 0)):  # each Ω–Ω neighbour pair once
            a = index[: height - shift_r, : width - shift_c]
            b = index[shift_r:, shift_c:]
            pair = (a >= 0) & (b >= 0)
            rows.append(a[pair])
            cols.append(b[pair])
        r, c = torch.cat(rows).numpy(), torch.cat(cols).numpy()
        count = int(inside.sum())
        ones = torch.ones(1, 1, height, width)
        degree = _neighbour_sum(ones)[0, 0][inside].numpy().astype(np.float64)
        adjacency = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(count, count))
        matrix = (sp.diags(degree) - adjacency - adjacency.T).tocsr()
        hierarchy = pyamg.smoothed_aggregation_solver(matrix)
        v, o = visible[view : view + 1].double(), occluded[view : view + 1].double()
        outside = (~inside).double()
        for channel in range(v.shape[1]):
            vc, oc = v[:, channel : channel + 1], o[:, channel : channel + 1]
            rhs = (_neighbour_sum(ones.double()) * vc - _neighbour_sum(vc) + _neighbour_sum(outside * oc))[0, 0]
            solution = hierarchy.solve(
                rhs[inside].numpy(), x0=vc[0, 0][inside].numpy(), tol=tol, maxiter=iterations, accel="cg"
            )
            out[view, channel][inside] = torch.from_numpy(solution).to(out.dtype)
    return out


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
    parser.add_argument(
        "--multigrid",
        action="store_true",
        help="also time pyamg's AMG-preconditioned CG on the CPU (pip install pyamg)",
    )
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
    if args.multigrid:
        cpu = (visible.cpu(), occluded.cpu(), masks.cpu())
        mg_seconds, mg_blended = _time(_multigrid_blend, cpu, torch.device("cpu"))
        result["seconds_multigrid_pcg_cpu"] = mg_seconds
        result["max_abs_difference_multigrid"] = float((blended.cpu() - mg_blended).abs().max())
    print(json.dumps(result, indent=2))
    if args.out is not None:
        from hfgi3d.io import write_json_atomic  # this checkout's (a measured old commit may predate it)

        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
