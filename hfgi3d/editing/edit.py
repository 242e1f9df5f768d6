"""Editing a finished inversion: ``python -m hfgi3d edit`` and ``python -m hfgi3d edit-texture``.

Both read what ``fit`` left in its output folder (the *run*): ``latent.pt`` (``ws``, ``w_e``,
``w_o`` and the input camera), ``generator.pt`` (the tuned generator, see
:mod:`hfgi3d.callbacks.outputs`) and ``config.yaml`` (the run's config as given).

``edit`` moves the latent along an attribute direction (InterFaceGAN, docs/method.md and SPEC §6):
``ws + α·d`` for each strength ``α``, rendered with the run's tuned generator, into
``RUN/edits/<name>/``:

* ``grid.png``: one row per strength; the input camera, then ``outputs.grid_size[0]`` yaws across
  ``±outputs.grid_yaw_rad`` at pitch 0 (the run's grid settings);
* ``input_view_<α>.png``: the input camera alone (``input_view_0.png`` is ``reconstruction.png``,
  pixel for pixel);
* ``orbit_<α>.mp4``: the run's orbit (``outputs.orbit_frames`` frames), one per strength;
* ``mesh.ply`` / ``mesh.glb``: the mesh at the strength of largest magnitude;
* ``edit.json``: the direction file, its metadata, the conditions, layers and strengths.

When the run logged to W&B, the edit's images, videos and mesh are added to that run
(``edits/<name>/…``, offline unless the run's logger said otherwise).

``edit-texture`` reruns stage 2 on a painted copy of the aligned input photo with the run's
stage-1 geometry (``model.stage_one_from``): see :func:`edit_texture`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from hfgi3d.errors import InputError
from hfgi3d.io import atomic_path, write_json_atomic
from hfgi3d.run_folder import CAMERA, CONFIG, GENERATOR, INPUT, LATENT, check_finished_run
from hfgi3d.stages import upgrade_model_config

EDITS = "edits"
TEXTURE_EDITS = "texture_edits"


@dataclass
class Run:
    """A finished inversion's folder, read for editing."""

    folder: Path
    config: dict[str, Any]
    """``config.yaml`` as a plain nested dict."""
    latent: dict[str, Tensor]
    """``latent.pt``: ``ws``, ``ws_estimate``, ``ws_occluded`` and ``c25``."""
    upgraded: bool = False
    """Whether :attr:`config` had the former flat names of the stage settings (moved into their groups)."""

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by its dotted name (``outputs.orbit_frames``), or ``default``. A linked
        value (:data:`hfgi3d.presets.LINKS`: saved configs hold only the source) is read at its source."""
        from hfgi3d.presets import LINKS, get

        value = get(self.config, dotted)
        source = next((source for source, target in LINKS if target == dotted), None)
        if value is None and source is not None:
            value = get(self.config, source)
        return default if value is None else value

    def required(self, dotted: str) -> Any:
        """:meth:`setting`, which the config must hold."""
        value = self.setting(dotted)
        if value is None:
            raise InputError(f"{self.folder / CONFIG} has no {dotted}")
        return value

    def generator(self, device: str | torch.device = "cpu") -> Any:
        """The tuned generator (``generator.pt``), in eval mode on ``device``."""
        from hfgi3d.generator import load_generator

        path = self.folder / GENERATOR
        if not path.is_file():
            raise InputError(
                f"{self.folder} has no {GENERATOR}: it was fitted with outputs.save_generator none; "
                "fit again with the default (fp16) to edit it"
            )
        return load_generator(path, device)

    def wandb_run(self) -> tuple[str, dict[str, Any]] | None:
        """``(run id, WandbLogger init_args)`` when the run logged to W&B, else ``None``."""
        loggers = self.setting("trainer.logger") or []
        for entry in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("WandbLogger"):
                init_args = entry.get("init_args") or {}
                save_dir = Path(init_args.get("save_dir") or self.folder)
                save_dir = save_dir if save_dir.is_dir() else self.folder
                folders = sorted((save_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
                if folders:
                    return folders[-1].name.rsplit("-", 1)[1], {**init_args, "save_dir": str(save_dir)}
        return None


def open_run(folder: str | Path) -> Run:
    """Read a run folder's ``config.yaml`` and ``latent.pt``; one-line errors for what is missing."""
    folder = check_finished_run(folder)
    latent = torch.load(folder / LATENT, map_location="cpu", weights_only=True)
    for key in ("ws", "ws_estimate", "ws_occluded", "c25"):
        if key not in latent:
            raise InputError(f"{folder / LATENT} has no {key!r}: it was written before editing existed; fit again")
    config = yaml.safe_load((folder / CONFIG).read_text()) or {}
    upgraded = bool(upgrade_model_config(config.get("model") or {}))  # a run of an earlier version
    return Run(folder, config, latent, upgraded)


def strength_tag(strength: float) -> str:
    """The strength as it appears in file names: ``-2``, ``0``, ``+0.5``."""
    return "0" if strength == 0 else f"{strength:+g}"


def edit(
    run_dir: str | Path,
    direction_path: str | Path,
    strengths: Sequence[float],
    conditions: Sequence[str | Path] = (),
    layers: tuple[int, int] | None = None,
    name: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``RUN/edits/<name>/`` (module docstring); returns that folder.

    ``name`` defaults to the direction file's stem (with ``_cond_<stems>`` for conditions).

    Raises:
        InputError: a missing run, generator, direction or condition file, a direction that does not
            fit the generator, no strengths, or an existing edit without ``overwrite``.
    """
    from tqdm import tqdm

    from hfgi3d.callbacks.outputs import write_mesh
    from hfgi3d.cameras import orbit_c25, yaw_pitch_grid, yaw_pitch_orbit
    from hfgi3d.editing.directions import condition, load_direction
    from hfgi3d.io import file_sha256
    from hfgi3d.video import save_image_grid, write_video

    if not strengths:
        raise InputError("give at least one --strength")
    if any(not math.isfinite(s) for s in strengths):
        raise InputError(f"strengths must be finite numbers, got {list(strengths)}")
    run = open_run(run_dir)
    direction_path = Path(direction_path)
    name = name or direction_path.stem + "".join(f"_cond_{Path(c).stem}" for c in conditions)
    out = run.folder / EDITS / name
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite or another --name")
    pretrained = str(run.setting("model.generator", ""))
    sha256 = file_sha256(pretrained) if pretrained and Path(pretrained).is_file() else None
    generator = run.generator(device)
    w_dim, num_ws = generator.config.w_dim, generator.num_ws
    with warnings.catch_warnings(record=True) as caught:  # said in one line each, not as Python warnings
        warnings.simplefilter("always")
        direction = load_direction(direction_path, w_dim, layers, generator_sha256=sha256)
        extra = [load_direction(path, w_dim, generator_sha256=sha256) for path in conditions]
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    direction = condition(direction, *extra)
    direction.per_layer(num_ws)  # checks the layer count and range before anything is rendered

    ws = run.latent["ws"].to(device)
    c25 = run.latent["c25"].to(device)
    num_yaw = int(run.required("outputs.grid_size")[0])
    yaw_max = float(run.required("outputs.grid_yaw_rad"))
    pitch_max = float(run.required("outputs.grid_pitch_rad"))
    orbit_frames = int(run.required("outputs.orbit_frames"))
    orbit_fps = int(run.required("outputs.orbit_fps"))
    mesh_resolution = int(run.required("outputs.mesh_resolution"))
    mesh_level = run.setting("outputs.mesh_level")
    yaw, pitch = yaw_pitch_grid((-yaw_max, yaw_max), (0.0, 0.0), num_yaw, 1)
    row_cameras = orbit_c25(yaw, pitch).to(device)

    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        started = time.perf_counter()
        rows = []
        largest = max(strengths, key=lambda s: (abs(s), s))  # ties: the positive one
        steps = len(strengths) + (1 if mesh_resolution > 0 else 0)
        bar = tqdm(total=steps, desc=f"edit ({name})", unit="render", disable=not progress)
        with torch.no_grad():
            for strength in strengths:
                edited = direction.apply(ws, strength)
                planes = generator.planes(edited)
                # The input camera alone, as the fit rendered reconstruction.png: equal at strength 0.
                view = generator.render_cameras(planes, edited, c25, deterministic=True)["image"].clamp(-1, 1)
                save_image_grid(view, staging / f"input_view_{strength_tag(strength)}.png", nrow=1)
                turned = generator.render_cameras(planes, edited, row_cameras, deterministic=True)["image"]
                rows.append(torch.cat([view, turned.clamp(-1, 1)]))
                if orbit_frames > 0:
                    orbit_yaw, orbit_pitch = yaw_pitch_orbit(orbit_frames, yaw_max, pitch_max)
                    frames = generator.render_cameras(planes, edited, orbit_c25(orbit_yaw, orbit_pitch).to(device))
                    write_video(
                        frames["image"].clamp(-1, 1).cpu(),
                        staging / f"orbit_{strength_tag(strength)}.mp4",
                        fps=orbit_fps,
                    )
                bar.update()
            save_image_grid(torch.cat(rows), staging / "grid.png", nrow=num_yaw + 1)
            mesh_written = False
            if mesh_resolution > 0:
                mesh_written = write_mesh(
                    generator, direction.apply(ws, largest), staging / "mesh.ply", mesh_resolution, mesh_level
                )
                bar.update()
        bar.close()
        record = {
            "run": str(run.folder),
            "direction": str(direction_path),
            "direction_metadata": direction.metadata,
            "conditions": [str(path) for path in conditions],
            "layers": list(layers) if layers else None,
            "strengths": list(strengths),
            "mesh_strength": largest if mesh_written else None,
            "columns": ["input camera", *[f"yaw {float(y):+.3f} rad" for y in yaw]],
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json_atomic(staging / "edit.json", record)
    except BaseException:  # nothing half-written: the edit folder appears whole or not at all
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _log_to_wandb(run, out, name, strengths)
    return out


def _log_to_wandb(run: Run, out: Path, name: str, strengths: Sequence[float]) -> None:
    """Add the edit's files to the run's W&B run, when it had one (resumed by id, same mode)."""
    found = run.wandb_run()
    if found is None:
        return
    import wandb

    from hfgi3d.callbacks.wandb_logging import resolve_mode

    run_id, init_args = found
    media: dict[str, Any] = {f"edits/{name}/grid": wandb.Image(str(out / "grid.png"), caption="rows: strengths")}
    for strength in strengths:
        video = out / f"orbit_{strength_tag(strength)}.mp4"
        if video.is_file():
            media[f"edits/{name}/orbit_{strength_tag(strength)}"] = wandb.Video(str(video), format="mp4")
    if (out / "mesh.glb").is_file():
        media[f"edits/{name}/mesh"] = wandb.Object3D(str(out / "mesh.glb"))
    experiment = wandb.init(
        project=init_args.get("project") or "hfgi3d",
        id=run_id,
        resume="allow",
        dir=init_args["save_dir"],
        mode=resolve_mode(init_args.get("mode")),
    )
    experiment.log(media)
    experiment.finish()


def edit_texture(
    run_dir: str | Path,
    image: str | Path,
    name: str | None = None,
    overwrite: bool = False,
    extra_args: Sequence[str] = (),
) -> Path:
    """Rerun stage 2 of a run on an edited copy of its aligned input photo; returns the new run folder.

    The run's config is reused with ``model.stage_one_from`` set to its ``latent.pt`` (so the pseudo
    views are rebuilt from the edited photo on the run's ``w_e``, ``w_o``, input camera and, with
    the same seed, the same auxiliary cameras and visibility), ``data.image`` set to ``image``,
    ``model.estimate.steps`` and ``model.occluded.steps`` set to 0. The result is a full run folder (novel
    views, orbit, mesh, metrics, ``latent.pt``, ``generator.pt``) at
    ``RUN/texture_edits/<name>/``. ``extra_args`` are further ``fit`` options (e.g. a shorter
    ``--model.pseudo_multiview.steps``).

    Raises:
        InputError: a missing run or photo, a photo of another size than the run's input, or an
            existing result without ``overwrite``.
    """
    from PIL import Image

    from hfgi3d.fit import main as fit_main

    run = open_run(run_dir)
    image = Path(image)
    if not image.is_file():
        raise InputError(f"no edited photo {image}")
    name = name or image.stem
    out = run.folder / TEXTURE_EDITS / name
    input_png = run.folder / INPUT
    if input_png.is_file():
        with Image.open(input_png) as original, Image.open(image) as edited:
            if original.size != edited.size:
                raise InputError(
                    f"{image} is {edited.size[0]}×{edited.size[1]} but the run's aligned input is "
                    f"{original.size[0]}×{original.size[1]}: paint on {input_png}"
                )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite or another --name")
    out.mkdir(parents=True, exist_ok=True)
    camera = out / CAMERA
    with atomic_path(camera) as temporary:
        temporary.write_text(json.dumps(run.latent["c25"][0].tolist()))
    print(f"texture edit: stage 2 on {image} with the geometry of {run.folder}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        config = run.folder / CONFIG
        if run.upgraded:  # fit reads the current names only
            config = Path(scratch) / CONFIG
            config.write_text(yaml.safe_dump(run.config, sort_keys=False))
        args = [
            "fit", "--config", str(config),
            "--data.image", str(image), "--data.camera", str(camera),
            "--model.stage_one_from", str(run.folder / LATENT),
            "--model.estimate.steps", "0", "--model.occluded.steps", "0",
            "--output_dir", str(out), "--overwrite", *extra_args,
        ]  # fmt: skip
        code = fit_main(args)
    if code != 0:
        raise InputError(f"the texture edit's stage 2 stopped (exit code {code}); see above")
    report = paint_check(run, out, image)
    write_json_atomic(out / PAINT_CHECK, report)
    if report["mean_iou"] is not None:
        print(
            f"paint check: the painted patch lands where the geometry carries it with mean IoU "
            f"{report['mean_iou']:.3f} over {len(report['views'])} novel views (lowest {report['min_iou']:.3f}); "
            f"{out / PAINT_CHECK}",
            file=sys.stderr,
        )
    else:
        print(f"paint check: {report['reason']}", file=sys.stderr)
    return out


PAINT_CHECK = "paint_check.json"
PAINT_THRESHOLD = 0.1
"""A pixel is painted where some channel of the edited photo moved by more than this ([-1, 1] units, ~13/255)."""
SOLID_STD = 0.05
"""The paint counts as one solid colour when each channel's spread over the patch is below this."""
MIN_WARPED_PIXELS = 16
"""Novel views where fewer painted pixels are visible are left out of the check."""


@torch.no_grad()
def paint_check(run: Run, edited_run: Path, image: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Does the paint land where the geometry says? For each view of the run's novel-view grid:
    the paint mask (edited photo vs ``input.png``) is warped from the input camera into the view with
    the stage-1 geometry (the depth of ``G(w_e)``, visible pixels only, as the pseudo views are built),
    and compared with the pixels of the edited run's render that show the paint (that moved more than
    halfway from the unedited run's render towards the paint colour): IoU. Only a solid patch has
    one colour to look for; other edits get a reason instead."""
    from hfgi3d.cameras import orbit_c25, yaw_pitch_grid
    from hfgi3d.data.inputs import load_image
    from hfgi3d.data.pseudo_views import render_views
    from hfgi3d.generator import load_generator, open_generator
    from hfgi3d.geometry import backward_warp, visibility_mask

    stage_one = open_generator(str(run.required("model.generator")), int(run.required("model.seed"))).to(device)
    size = stage_one.config.img_resolution
    original = load_image(run.folder / INPUT, size).to(device)
    painted = load_image(image, size).to(device)
    mask = ((painted - original).abs().amax(1, keepdim=True) > PAINT_THRESHOLD).float()
    report: dict[str, Any] = {"painted_pixels": int(mask.sum()), "views": [], "mean_iou": None}
    if report["painted_pixels"] == 0:
        return {**report, "reason": "the edited photo equals the run's input: nothing was painted"}
    pixels = painted.flatten(2)[0][:, mask.flatten() > 0]  # 3×P
    colour, spread = pixels.mean(1), pixels.std(1) if pixels.shape[1] > 1 else torch.zeros(3)
    report["colour"] = [round(float(v), 4) for v in colour]
    if float(spread.max()) > SOLID_STD:
        return {**report, "reason": f"the paint is not one solid colour (spread {float(spread.max()):.3f}): no IoU"}
    ws_estimate, c25 = run.latent["ws_estimate"].to(device), run.latent["c25"].to(device)
    num_yaw, num_pitch = run.required("outputs.grid_size")
    yaw_max, pitch_max = float(run.required("outputs.grid_yaw_rad")), float(run.required("outputs.grid_pitch_rad"))
    yaw, pitch = yaw_pitch_grid((-yaw_max, yaw_max), (-pitch_max, pitch_max), int(num_yaw), int(num_pitch))
    cameras = orbit_c25(yaw, pitch).to(device)
    _, depth_input = render_views(stage_one, ws_estimate, c25)
    _, depth_views = render_views(stage_one, ws_estimate, cameras)
    rel_tol, grazing_cos = (
        float(run.required(f"data.pseudo_views.{key}")) for key in ("visibility_rel_tol", "grazing_cos")
    )
    visible = visibility_mask(depth_input, c25, depth_views, cameras, rel_tol, grazing_cos)
    warped = (backward_warp(mask, depth_views, cameras, c25)[0] > 0.5).float() * (visible > 0.5).float()

    def render(folder: Path) -> Tensor:
        generator = load_generator(folder / GENERATOR, device)
        ws = torch.load(folder / LATENT, map_location=device, weights_only=True)["ws"]
        return generator.render_cameras(generator.planes(ws), ws, cameras, deterministic=True)["image"].clamp(-1, 1)

    # The paint is found where the edited render came more than halfway from the unedited render's
    # colour towards the paint colour (renders are smoother than a painted patch: no fixed tolerance).
    paint = colour.view(1, 3, 1, 1)
    after, before = render(edited_run), render(run.folder)
    found = ((after - paint).norm(dim=1, keepdim=True) < 0.5 * (before - paint).norm(dim=1, keepdim=True)).float()

    def iou(found: Tensor, expected: Tensor) -> float:
        union = float(torch.maximum(found, expected).sum())
        return float((found * expected).sum()) / union if union else float("nan")

    for index in range(len(cameras)):
        if float(warped[index].sum()) < MIN_WARPED_PIXELS:
            continue
        report["views"].append({
            "yaw_rad": round(float(yaw[index]), 4), "pitch_rad": round(float(pitch[index]), 4),
            "warped_pixels": int(warped[index].sum()),
            "found_pixels": int(found[index].sum()), "iou": iou(found[index], warped[index]),
        })  # fmt: skip
    if not report["views"]:
        return {**report, "reason": "the painted patch is visible in none of the novel views"}
    report["mean_iou"] = sum(v["iou"] for v in report["views"]) / len(report["views"])
    report["min_iou"] = min(v["iou"] for v in report["views"])
    return report
