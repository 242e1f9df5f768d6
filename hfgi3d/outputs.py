"""Writing an inversion's results to one folder per image (a Lightning callback).

Files: ``input.png``, ``reconstruction.png``, ``novel_views.png`` (yaw × pitch grid),
``orbit.mp4``, ``pseudo_views.png`` (rows: v_i, V_i, O_i, M_v), ``mesh.ply`` (world units,
vertex colours), ``latent.pt`` (``ws`` 1×num_ws×w_dim and ``ws_occluded``), ``generator.pt``
(optional, the tuned generator) and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from hfgi3d.cameras import orbit_c25, yaw_pitch_grid, yaw_pitch_orbit
from hfgi3d.generator import save_generator
from hfgi3d.mesh import VoxelGrid, generator_field, mesh_from_grid, sample_grid, write_ply
from hfgi3d.video import save_image_grid, write_video

RESULT_FILES = ("metrics.json", "reconstruction.png")
"""Files whose presence means a folder already holds results (guarded by ``overwrite``)."""


class InversionOutputs(L.Callback):
    """Write the results of an :class:`~hfgi3d.inversion.InversionModule` fit when it ends.

    Args:
        output_dir: result folder; ``None`` lets the ``fit`` command use ``outputs/<image name>``.
        overwrite: replace existing results (otherwise the fit refuses to start).
        save_generator: also write the tuned generator (~120 MB for FFHQ-512).
        orbit_frames: frames of the orbit video (yaw ±0.35, pitch ±0.25 rad ellipse).
        orbit_fps: frame rate of the orbit video.
        grid_yaw_rad, grid_pitch_rad, grid_size: the novel-view grid (half-ranges, yaw×pitch count).
        mesh_resolution: marching-cubes grid resolution (voxels per side); 0 skips the mesh.
        mesh_level: density-logit level of the surface (EG3D uses 10). ``None``, or a level the
            grid never crosses (random tiny generators), uses the grid's 90th percentile.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        overwrite: bool = False,
        save_generator: bool = False,
        orbit_frames: int = 60,
        orbit_fps: int = 30,
        grid_yaw_rad: float = 0.35,
        grid_pitch_rad: float = 0.25,
        grid_size: tuple[int, int] = (5, 3),
        mesh_resolution: int = 128,
        mesh_level: float | None = 10.0,
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
        self._started = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.output_dir is None:
            raise ValueError("InversionOutputs needs an output_dir")
        existing = [name for name in RESULT_FILES if (self.output_dir / name).exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{self.output_dir} already holds results ({', '.join(existing)}); "
                "pass --overwrite to replace them or choose another --output_dir"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.output_dir is not None
        module: Any = pl_module
        datamodule: Any = trainer.datamodule  # type: ignore[attr-defined]
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        generator = module.G.eval()
        device = module.device
        image, c25 = datamodule.image.to(device), datamodule.c25.to(device)
        ws = module.ws().detach()
        planes = generator.planes(ws)

        def render(cameras: Tensor) -> Tensor:
            return generator.render_cameras(planes, ws, cameras, deterministic=True)["image"].clamp(-1, 1)

        reconstruction = render(c25)
        save_image_grid(image, out / "input.png", nrow=1)
        save_image_grid(reconstruction, out / "reconstruction.png", nrow=1)
        num_yaw, num_pitch = self.grid_size
        yaw, pitch = yaw_pitch_grid(
            (-self.grid_yaw_rad, self.grid_yaw_rad), (-self.grid_pitch_rad, self.grid_pitch_rad), num_yaw, num_pitch
        )
        save_image_grid(render(orbit_c25(yaw, pitch).to(device)), out / "novel_views.png", nrow=num_yaw)
        if self.orbit_frames > 0:
            yaw, pitch = yaw_pitch_orbit(self.orbit_frames, self.grid_yaw_rad, self.grid_pitch_rad)
            write_video(render(orbit_c25(yaw, pitch).to(device)).cpu(), out / "orbit.mp4", fps=self.orbit_fps)
        views = datamodule.views
        if views is not None:
            shown = views.select(torch.arange(min(len(views), 8)))
            rows = [shown.pseudo, shown.visible, shown.occluded, shown.mask_visible.expand_as(shown.pseudo) * 2 - 1]
            save_image_grid(torch.cat(rows).clamp(-1, 1), out / "pseudo_views.png", nrow=len(shown))
        mesh_written = False
        if self.mesh_resolution > 0:
            mesh_written = self._write_mesh(generator, ws, out / "mesh.ply")
        torch.save({"ws": ws.cpu(), "ws_occluded": module.ws_occluded.cpu()}, out / "latent.pt")
        if self.save_generator:
            save_generator(generator, out / "generator.pt")
        metrics = {
            "image_id": datamodule.image_id,
            "psnr": float(peak_signal_noise_ratio(reconstruction, image, data_range=2.0)),
            "ssim": float(_as_tensor(structural_similarity_index_measure(reconstruction, image, data_range=2.0))),
            "lpips": float(module.lpips(reconstruction, image).mean()),
            "seconds": time.perf_counter() - self._started,
            "steps": trainer.global_step,
            "mesh": mesh_written,
        }
        _write_json(out / "metrics.json", metrics)

    def _write_mesh(self, generator: Any, ws: Tensor, path: Path) -> bool:
        """Write the mesh; returns False when the density field has no usable level."""
        field = generator_field(generator, ws)
        grid = VoxelGrid(generator.config.rendering.box_warp, self.mesh_resolution)
        sigma = sample_grid(field, grid, device=ws.device)
        level = self.mesh_level
        if level is None or not float(sigma.min()) < level < float(sigma.max()):
            # Random test generators never reach EG3D's level: take the densest 10 % instead.
            level = float(torch.quantile(sigma.flatten()[:: max(1, sigma.numel() // 2**20)], 0.9))
        if not math.isfinite(level) or not float(sigma.min()) < level < float(sigma.max()):
            return False
        write_ply(mesh_from_grid(sigma, grid, level, field, device=ws.device), path)
        return True


def _write_json(path: Path, values: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)


def _as_tensor(value: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """torchmetrics' SSIM returns a tensor unless asked for the full map as well."""
    return value[0] if isinstance(value, tuple) else value
