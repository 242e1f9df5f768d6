"""Writing an inversion's results to one folder per image (a Lightning callback).

One photo (``data.image``) writes into ``output_dir``; a batch (``data.images``) into
``output_dir/<image id>/`` for each photo, each folder exactly as a single run writes it. A photo
the fit dropped (non-finite loss) gets ``failed.json`` (its id and the reason) instead.

Files: ``input.png``, ``reconstruction.png``, ``novel_views.png`` (yaw × pitch grid),
``depth.png`` (the same grid's depth, near = bright), ``orbit.mp4``, ``pseudo_views.png``
(rows: v_i, V_i, O_i, M_v), ``pseudo_view_masks.png`` (v_i tinted green where ``M_v``, red where
``M_o``), ``mesh.ply`` and ``mesh.glb`` (world units, vertex colours), ``latent.pt`` and
``generator.pt`` (the tuned generator, float16 by default). The evaluation callback
(:mod:`hfgi3d.callbacks.evaluation`) adds ``metrics.json`` to the folder and ``fit`` the run's
``config.yaml``. ``python -m hfgi3d edit`` and ``edit-texture`` read ``latent.pt``,
``generator.pt`` and ``config.yaml`` (:mod:`hfgi3d.editing.edit`).

``camera.json`` holds the input camera the results were rendered with (``c25``), the one the fit
started from (``initial_c25``) and, with ``model.camera.refine``, the refined offsets
(``offsets_rad``: yaw, pitch, roll; ``translation``).

``latent.pt`` holds ``ws`` (the final latent, 1×num_ws×w_dim), ``ws_estimate`` (``w_e``, stage 1's
latent: the pseudo views' geometry), ``ws_occluded`` (``w_o``) and ``c25`` (the input camera, 1×25).

``generator.pt`` size, FFHQ-512 (31.5 M weights): 126 MB in float32, 63 MB in float16; a float16
delta against the pretrained file would be 61 MB (the mapping network, 0.8 M weights, is the only
part stage 2 leaves alone), not worth tying the run to that file. Rounding the weights to float16
moves an FFHQ-512 render by at most 9·10⁻⁴ (random weights; 2 % of 8-bit pixels change by one
level). With ``save_generator: fp16`` the tuned weights are rounded *before* the results are
rendered (the callback sets the module's ``result_dtype`` when the fit starts; this callback and
the evaluation both call its ``finish_weights`` first, so their order does not matter): every file
of the folder and ``metrics.json`` come from the saved generator, and an edit at strength 0
reproduces ``reconstruction.png`` exactly.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from hfgi3d.cameras import orbit_c25, yaw_pitch_grid, yaw_pitch_orbit
from hfgi3d.data.pseudo_views import PseudoViews
from hfgi3d.generator import save_generator
from hfgi3d.io import write_json_atomic
from hfgi3d.mesh import VoxelGrid, generator_field, mesh_from_grid, sample_grid, write_glb, write_ply
from hfgi3d.run_folder import CAMERA, FAILED, GENERATOR, INPUT, LATENT, RECONSTRUCTION, RESULT_FILES
from hfgi3d.video import save_image_grid, write_video

from .protocols import Inversion, Photos, inversion_of, photos_of

MASK_TINT_VISIBLE = (-1.0, 1.0, -1.0)  # green, in [-1, 1]
MASK_TINT_OCCLUDED = (1.0, -1.0, -1.0)  # red
MASK_TINT_ALPHA = 0.4

GeneratorFormat = Literal["fp16", "fp32", "none"]
GENERATOR_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class InversionOutputs(L.Callback):
    """Write the results of an :class:`~hfgi3d.inversion.InversionModule` fit when it ends.

    Args:
        output_dir: result folder; ``None`` lets the ``fit`` command use ``outputs/<image name>``.
        overwrite: replace existing results (otherwise the fit refuses to start).
        save_generator: how ``generator.pt`` (the tuned generator, needed by ``edit``) is stored:
            ``fp16`` (63 MB at FFHQ-512; the results are rendered from the rounded weights),
            ``fp32`` (126 MB) or ``none`` (not written: the run cannot be edited).
        orbit_frames: frames of the orbit video (an ellipse of the grid's half-ranges); 0 skips it.
        orbit_fps: frame rate of the orbit video.
        grid_yaw_rad, grid_pitch_rad, grid_size: the novel-view grid (half-ranges, yaw×pitch count);
            ``fit`` links the half-ranges to the pseudo views' (``data.pseudo_views.*_range_rad``).
        mesh_resolution: marching-cubes grid resolution (voxels per side); 0 skips the mesh.
        mesh_level: density-logit level of the surface (EG3D uses 10). ``None``, or a level the
            grid never crosses (random tiny generators), uses the grid's 90th percentile.

    The values live in ``configs/`` (``outputs.*``).
    """

    def __init__(
        self,
        save_generator: GeneratorFormat,
        orbit_frames: int,
        orbit_fps: int,
        grid_yaw_rad: float,
        grid_pitch_rad: float,
        grid_size: tuple[int, int],
        mesh_resolution: int,
        mesh_level: float | None,
        output_dir: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.overwrite = overwrite
        self.save_generator = save_generator
        self.orbit_frames = orbit_frames
        self.orbit_fps = orbit_fps
        self.grid_yaw_rad = grid_yaw_rad
        self.grid_pitch_rad = grid_pitch_rad
        self.grid_size = grid_size
        self.mesh_resolution = mesh_resolution
        self.mesh_level = mesh_level

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.save_generator not in ("fp16", "fp32", "none"):
            raise ValueError(f"outputs.save_generator must be fp16, fp32 or none, not {self.save_generator!r}")
        if self.output_dir is None:
            raise ValueError("InversionOutputs needs an output_dir")
        module = inversion_of(pl_module)
        module.result_dtype = GENERATOR_DTYPES.get(self.save_generator, torch.float32)
        datamodule = photos_of(trainer)
        for folder in datamodule.photo_folders(self.output_dir):
            existing = [name for name in (*RESULT_FILES, FAILED) if (folder / name).exists()]
            if existing and not self.overwrite:
                raise FileExistsError(
                    f"{folder} already holds results ({', '.join(existing)}); "
                    "pass --overwrite to replace them or choose another --output_dir"
                )

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.output_dir is not None
        module = inversion_of(pl_module)
        datamodule = photos_of(trainer)
        module.G.eval()
        module.finish_weights()  # what follows is rendered from the weights as saved
        dtype = GENERATOR_DTYPES.get(self.save_generator)
        for photo, out in enumerate(datamodule.photo_folders(self.output_dir)):
            out.mkdir(parents=True, exist_ok=True)
            if not bool(module.alive[photo]):
                reason = module.failures.get(photo, "dropped")
                write_json_atomic(out / FAILED, {"image_id": datamodule.image_ids[photo], "error": reason})
                rank_zero_warn(f"no results for {datamodule.image_ids[photo]}: {reason} ({out / FAILED})")
                continue
            self._write_photo(module, datamodule, photo, out, dtype)

    def _write_photo(
        self, module: Inversion, datamodule: Photos, photo: int, out: Path, dtype: torch.dtype | None
    ) -> None:
        """Every result file of photo ``photo`` into ``out``."""
        started = time.perf_counter()
        parts = ["reconstruction", f"{self.grid_size[0]}×{self.grid_size[1]} novel views"]
        parts += [f"orbit video ({self.orbit_frames} frames)"] if self.orbit_frames > 0 else []
        parts += [f"mesh ({self.mesh_resolution}³)"] if self.mesh_resolution > 0 else []
        rank_zero_info(f"writing {', '.join(parts)} to {out}")
        assert datamodule.image is not None and datamodule.c25 is not None  # set when the fit started
        generator = module.photo_generator(photo).eval()
        device = module.device
        image = datamodule.image[photo : photo + 1].to(device)
        c25 = module.input_camera(datamodule.c25)[photo : photo + 1]
        ws = module.ws().detach()[photo : photo + 1]
        planes = generator.planes(ws)

        def render(cameras: Tensor) -> dict[str, Tensor]:
            return generator.render_cameras(planes, ws, cameras, deterministic=True)

        reconstruction = render(c25)["image"].clamp(-1, 1)
        save_image_grid(image, out / INPUT, nrow=1)
        save_image_grid(reconstruction, out / RECONSTRUCTION, nrow=1)
        num_yaw, num_pitch = self.grid_size
        yaw, pitch = yaw_pitch_grid(
            (-self.grid_yaw_rad, self.grid_yaw_rad), (-self.grid_pitch_rad, self.grid_pitch_rad), num_yaw, num_pitch
        )
        grid = render(orbit_c25(yaw, pitch).to(device))
        save_image_grid(grid["image"].clamp(-1, 1), out / "novel_views.png", nrow=num_yaw)
        rendering = generator.config.rendering
        save_image_grid(
            depth_image(grid["image_depth"], rendering.ray_start, rendering.ray_end), out / "depth.png", nrow=num_yaw
        )
        if self.orbit_frames > 0:
            yaw, pitch = yaw_pitch_orbit(self.orbit_frames, self.grid_yaw_rad, self.grid_pitch_rad)
            frames = render(orbit_c25(yaw, pitch).to(device))["image"].clamp(-1, 1)
            write_video(frames.cpu(), out / "orbit.mp4", fps=self.orbit_fps)
        views = datamodule.views
        if views is not None:
            per_photo = len(views) // datamodule.photo_count
            shown = views.select(photo * per_photo + torch.arange(min(per_photo, 8)))
            rows = [shown.pseudo, shown.visible, shown.occluded, shown.mask_visible.expand_as(shown.pseudo) * 2 - 1]
            save_image_grid(torch.cat(rows).clamp(-1, 1), out / "pseudo_views.png", nrow=len(shown))
            save_image_grid(mask_overlay(shown), out / "pseudo_view_masks.png", nrow=len(shown))
        if self.mesh_resolution > 0 and not write_mesh(
            generator, ws, out / "mesh.ply", self.mesh_resolution, self.mesh_level
        ):
            image_id = datamodule.image_ids[photo]
            rank_zero_warn(f"no mesh written: the density field of {image_id} has no usable surface level")
        write_json_atomic(out / CAMERA, module.camera_record(datamodule.c25, photo))
        latent = {
            "ws": ws,
            "ws_estimate": module.ws_estimate[photo : photo + 1],
            "ws_occluded": module.ws_occluded[photo : photo + 1],
            "c25": c25,
        }
        torch.save({key: value.detach().cpu() for key, value in latent.items()}, out / LATENT)
        if dtype is not None:
            save_generator(generator, out / GENERATOR, dtype)
        rank_zero_info(f"results written in {time.perf_counter() - started:.1f} s")


def write_mesh(generator: Any, ws: Tensor, path: Path, resolution: int, level: float | None) -> bool:
    """Write the mesh of ``ws`` (``.ply`` and ``.glb``) by marching cubes on a ``resolution``³ grid at
    density ``level``; returns False when the density field has no usable level."""
    field = generator_field(generator, ws)
    grid = VoxelGrid(generator.config.rendering.box_warp, resolution)
    sigma = sample_grid(field, grid, device=ws.device)
    if level is None or not float(sigma.min()) < level < float(sigma.max()):
        # Random test generators never reach EG3D's level: take the densest 10 % instead.
        level = float(torch.quantile(sigma.flatten()[:: max(1, sigma.numel() // 2**20)], 0.9))
    if not math.isfinite(level) or not float(sigma.min()) < level < float(sigma.max()):
        return False
    mesh = mesh_from_grid(sigma, grid, level, field, device=ws.device)
    write_ply(mesh, path)
    write_glb(mesh, path.with_suffix(".glb"))
    return True


def depth_image(depth: Tensor, near: float, far: float) -> Tensor:
    """``B×1×R×R`` ray depths → ``B×3×R×R`` grey images in ``[-1, 1]``: ``near`` white, ``far`` black."""
    closeness = ((far - depth) / (far - near)).clamp(0, 1)  # B×1×R×R, 1 at the near plane
    return (closeness * 2 - 1).expand(-1, 3, -1, -1)


def mask_overlay(views: PseudoViews) -> Tensor:
    """``K×3×H×W`` pseudo views tinted green where ``M_v`` (input texture) and red where ``M_o``."""
    visible = views.pseudo.new_tensor(MASK_TINT_VISIBLE).view(1, 3, 1, 1)
    occluded = views.pseudo.new_tensor(MASK_TINT_OCCLUDED).view(1, 3, 1, 1)
    tint = views.mask_visible * visible + views.mask_occluded * occluded  # K×3×H×W
    return ((1 - MASK_TINT_ALPHA) * views.pseudo + MASK_TINT_ALPHA * tint).clamp(-1, 1)
