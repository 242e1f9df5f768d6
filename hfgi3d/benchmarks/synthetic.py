"""A benchmark with ground truth in every view, needing no downloaded data.

For each image: a latent ``w*`` (seeded) of the benchmark's generator is rendered from a random
input pose (yaw ±0.3, pitch ±0.15 rad); out-of-distribution details the generator cannot make
(saturated strokes and dots, like face paint or tattoos) are painted on that input view. The
paint lies on the surface: the ground truth of a novel view is the true render of ``w*`` with
the paint carried over through the true depth wherever the input camera sees the same surface
point. Every method inverts the painted input view; its novel views (the paper's 5-view set:
canonical + the 4 corners of yaw ±0.35, pitch ±0.25) are scored against the ground truth:
``novel_psnr``, ``novel_ssim``, ``novel_lpips`` (AlexNet) over whole views and ``paint_psnr``
over the carried-over paint only (does the detail survive a new viewpoint?). Input-view and
consistency metrics come from the run's own ``metrics.json``.

Convention:
    Images ``[-1, 1]``, cameras ``c25``; the benchmark's generator is opened with
    :func:`hfgi3d.generator.open_generator` and the same spec and seed are given to every
    method's fit, so ``w*`` lies in the space being searched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hfgi3d import run_folder
from hfgi3d.benchmarks.runner import Job, Photo, Worker, run_fit
from hfgi3d.cameras import orbit_c25
from hfgi3d.generator import TriPlaneGenerator, load_generator, open_generator
from hfgi3d.geometry import backward_warp, upsample_depth, visibility_mask
from hfgi3d.losses import LPIPS
from hfgi3d.metrics.evaluation import consistency_cameras
from hfgi3d.metrics.fidelity import finite_mean, masked_psnr, psnr, ssim
from hfgi3d.metrics.registry import SYNTHETIC, table_columns

INPUT_YAW_RAD = 0.3
INPUT_PITCH_RAD = 0.15
NOVEL_YAW_RAD = 0.35
NOVEL_PITCH_RAD = 0.25
TRUNCATION_PSI = 0.7
PAINT_REGION = (0.25, 0.75)  # strokes stay in the central square, where the face is
PAINT_SATURATION = 0.9  # colours far from skin tones: pure-ish hues at ±0.9
NOVEL_VS_TRUTH = "novel_vs_truth.png"
"""A scored run's novel views under the ground truth (5 columns; rows: truth, the method)."""


def _segment_distance(points: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Distance of ``P×2`` points to the segment ``start``–``end`` (2-vectors)."""
    direction = end - start
    t = ((points - start) @ direction / direction.square().sum().clamp_min(1e-12)).clamp(0, 1)  # P
    return (points - (start + t[:, None] * direction)).norm(dim=1)


@dataclass(frozen=True)
class Paint:
    """What :func:`paint_edits` paints: strokes (each two segments) and dots, sizes as fractions of
    the image's side (a stroke's half-width, a dot's radius)."""

    strokes: int = 3
    dots: int = 6
    stroke_half_width: float = 0.012
    dot_radius: float = 0.01


PAINTS = {
    "fine": Paint(),
    "bold": Paint(strokes=3, dots=4, stroke_half_width=0.03, dot_radius=0.035),
}
"""The benchmark's paint sizes (``--paint``). ``fine``: thin strokes and dots (1.5 and 1.3 px at
128², the CI size); ``bold``: strokes 7.7 px and dots 9 px wide at 128², about 4 texels of a 64²
tri-plane, which a generator at that plane size can hold in 3D (the ground-truth profile)."""


def paint_edits(image: Tensor, seed: int, paint: Paint = PAINTS["fine"]) -> tuple[Tensor, Tensor]:
    """Paint random strokes and dots on a ``1×3×R×R`` image; returns ``(painted, mask 1×1×R×R)``."""
    resolution = image.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1).reshape(-1, 2)  # P×2 (x, y)
    low, high = PAINT_REGION
    painted = image.clone()
    mask = torch.zeros(1, 1, resolution, resolution)

    def colour() -> Tensor:
        hue = torch.rand(3, generator=generator)
        return ((hue > 0.5).float() * 2 - 1) * PAINT_SATURATION  # corners of the RGB cube

    shapes: list[tuple[Tensor, Tensor]] = []
    for _ in range(paint.strokes):
        knots = low + (high - low) * torch.rand(3, 2, generator=generator)
        distance = torch.minimum(
            _segment_distance(grid, knots[0], knots[1]), _segment_distance(grid, knots[1], knots[2])
        )
        shapes.append((distance <= paint.stroke_half_width, colour()))
    for _ in range(paint.dots):
        centre = low + (high - low) * torch.rand(2, generator=generator)
        shapes.append(((grid - centre).norm(dim=1) <= paint.dot_radius, colour()))
    for inside, rgb in shapes:
        where = inside.reshape(1, 1, resolution, resolution)
        painted = torch.where(where, rgb.view(1, 3, 1, 1), painted)
        mask = torch.maximum(mask, where.float())
    return painted, mask


@torch.no_grad()
def make_case(generator: TriPlaneGenerator, seed: int, paint: Paint = PAINTS["fine"]) -> dict[str, Tensor]:
    """One image: the painted input view, its camera, the 5 novel cameras and their ground truth."""
    draws = torch.Generator().manual_seed(seed)
    z = torch.randn(1, generator.config.z_dim, generator=draws)
    yaw = float((torch.rand(1, generator=draws) * 2 - 1) * INPUT_YAW_RAD)
    pitch = float((torch.rand(1, generator=draws) * 2 - 1) * INPUT_PITCH_RAD)
    c_input = orbit_c25(yaw, pitch)
    ws = generator.mapping(z, orbit_c25(0.0, 0.0), truncation_psi=TRUNCATION_PSI)
    planes = generator.planes(ws)
    out = generator.render_cameras(planes, ws, c_input, deterministic=True)
    image = out["image"].clamp(-1, 1)
    resolution = image.shape[-1]
    depth_input = upsample_depth(out["image_depth"], resolution)
    painted, paint_mask = paint_edits(image, seed, paint)
    c_novel = consistency_cameras(c_input, NOVEL_YAW_RAD, NOVEL_PITCH_RAD)
    novel = generator.render_cameras(planes, ws, c_novel, deterministic=True)
    depth_novel = upsample_depth(novel["image_depth"], resolution)  # N×1×R×R
    seen = visibility_mask(depth_input, c_input, depth_novel, c_novel)
    carried, inside = backward_warp(torch.cat([painted, paint_mask], dim=1), depth_novel, c_novel, c_input)
    carried_mask = (carried[:, 3:] > 0.5).float() * seen * inside  # N×1×R×R
    truth = torch.where(carried_mask > 0, carried[:, :3], novel["image"].clamp(-1, 1))
    return {
        "input": painted,
        "c_input": c_input,
        "c_novel": c_novel,
        "truth": truth,
        "paint_mask": carried_mask,
        "ws": ws,
    }


def save_image(image: Tensor, path: Path) -> None:
    pixels = ((image[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


def prepare(generator_spec: str, seed: int, num_images: int, folder: Path, paint: Paint = PAINTS["fine"]) -> list[str]:
    """Write ``<id>.png``, ``<id>.json`` (camera) and ``<id>.pt`` (ground truth) per image; returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = open_generator(generator_spec, seed).eval()
    ids = []
    for index in range(num_images):
        image_id = f"synthetic_{index:04d}"
        ids.append(image_id)
        if (folder / f"{image_id}.pt").is_file():
            continue
        case = make_case(generator, seed=1000 + index, paint=paint)
        save_image(case["input"], folder / f"{image_id}.png")
        (folder / f"{image_id}.json").write_text(json.dumps(case["c_input"][0].tolist()))
        torch.save(
            {key: case[key].cpu() for key in ("c_input", "c_novel", "truth", "paint_mask", "ws")},
            folder / f"{image_id}.pt",
        )
    return ids


def score_novel_views(rendered: Tensor, case: dict[str, Tensor], lpips: LPIPS | None = None) -> dict[str, float | None]:
    """Scores of a method's renders ``5×3×R×R`` at ``case["c_novel"]`` against the ground truth of
    :func:`make_case`: ``novel_psnr``, ``novel_ssim``, ``novel_lpips`` (with ``lpips``), ``paint_psnr``
    (over the carried-over paint only; ``None`` where no view shows paint) and ``paint_coverage``."""
    rendered = rendered.clamp(-1, 1)
    truth, paint = case["truth"].to(rendered.device), case["paint_mask"].to(rendered.device)
    has_paint = paint.flatten(1).sum(1) > 0
    paint_values = masked_psnr(rendered[has_paint], truth[has_paint], paint[has_paint]) if has_paint.any() else None
    scores: dict[str, float | None] = {
        "novel_psnr": float(psnr(rendered, truth).mean()),
        "novel_ssim": float(ssim(rendered, truth).mean()),
    }
    if lpips is not None:
        scores["novel_lpips"] = float(lpips.to(rendered.device)(rendered, truth).mean())
    scores["paint_psnr"] = None if paint_values is None else finite_mean(paint_values)
    scores["paint_coverage"] = float(paint.mean())
    return scores


@torch.no_grad()
def score(run_dir: Path, truth_path: Path, lpips: LPIPS) -> dict[str, float | None]:
    """Novel-view scores of a finished fit (its ``generator.pt`` and ``latent.pt``) against the ground
    truth (:func:`score_novel_views`); the renders and the truth, side by side, go to ``NOVEL_VS_TRUTH``
    in ``run_dir`` (rows: truth, this method; columns: the 5 views)."""
    case = torch.load(truth_path, map_location="cpu", weights_only=True)
    generator = load_generator(run_dir / run_folder.GENERATOR).eval()
    ws = torch.load(run_dir / run_folder.LATENT, map_location="cpu", weights_only=True)["ws"]
    rendered = generator.render_cameras(generator.planes(ws), ws, case["c_novel"], deterministic=True)["image"]
    grid = torch.cat([torch.cat(list(case["truth"]), dim=-1), torch.cat(list(rendered), dim=-1)], dim=-2)
    save_image(grid[None], run_dir / NOVEL_VS_TRUTH)
    return score_novel_views(rendered, case, lpips)


SYNTHETIC_COLUMNS = table_columns(SYNTHETIC)
"""Columns of the synthetic benchmark's table."""


def curves_args(data: Path, every_n_steps: int) -> list[str]:
    """``fit`` options that add :class:`hfgi3d.callbacks.groundtruth.GroundTruthCurves` (``truth/*``
    every ``every_n_steps`` steps; none for 0)."""
    if every_n_steps <= 0:
        return []
    return [
        "--trainer.callbacks+=hfgi3d.callbacks.groundtruth.GroundTruthCurves",
        f"--trainer.callbacks.truth_dir={data}",
        f"--trainer.callbacks.every_n_steps={every_n_steps}",
    ]


def make_job_fn(
    generator_spec: str,
    profile: str | None,
    data: Path,
    runs: Path,
    lpips: LPIPS,
    wandb_group: str | None = None,
    curves: int = 0,
    keep_generators: bool = False,
) -> Any:
    """The job function: fit the method's preset on the batch's painted input views (logging the
    ground-truth curves every ``curves`` steps, if not 0), then score each photo's novel views (and
    delete its tuned generator, unless ``keep_generators``)."""

    def run_job(jobs: list[Job], worker: Worker) -> list[dict[str, Any]]:
        root = runs / jobs[0].method if len(jobs) == 1 else runs / jobs[0].method / f"batch_{jobs[0].image_id}"
        photos = [
            Photo(data / f"{job.image_id}.png", data / f"{job.image_id}.json", root / job.image_id) for job in jobs
        ]
        extra = ("--outputs.save_generator", "fp32", *curves_args(data, curves))  # G: scored below
        rows = []
        for job, photo, metrics in zip(
            jobs, photos, run_fit(jobs, worker, generator_spec, profile, photos, wandb_group, extra), strict=True
        ):
            if "error" in metrics:
                rows.append(metrics)
                continue
            row = {key: value for key, value in metrics.items() if key not in ("image_id", "skipped")}
            row.update(score(photo.out, data / f"{job.image_id}.pt", lpips))
            if not keep_generators:  # ~1 MB tiny, ~120 MB FFHQ-512: scored, no longer needed
                (photo.out / run_folder.GENERATOR).unlink()
            rows.append(row)
        return rows

    return run_job
