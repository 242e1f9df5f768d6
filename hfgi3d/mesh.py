"""Shape extraction: density on a voxel grid, marching cubes, vertex colours, PLY and GLB files.

Convention:
    Everything is in world units (see :mod:`hfgi3d.cameras`: y-up, head near the origin).
    The grid covers the cube ``[-box_size/2, box_size/2]³`` (for a generator the tri-plane box,
    ``box_size = box_warp``) with ``D³`` voxels of edge ``box_size / D``; sample
    ``[i, j, k]`` is the density logit at the voxel *centre*
    ``(x_i, y_j, z_k) = -box_size/2 + (index + 0.5) · box_size / D``, i.e. the first index
    is ``x``, the second ``y`` and the third ``z``. ``sigma`` is the decoder's raw logit;
    the rendered density is ``softplus(sigma - 1)``.
    Mesh faces are counter-clockwise seen from outside, so ``(v1 - v0) × (v2 - v0)`` points
    away from the dense interior. Vertex colours are the decoder's first three feature
    channels (``[0, 1]``) at the vertices, stored as sRGB ``uint8``; the GLB holds them linear,
    as glTF requires.

PLY and GLB are written by trimesh (numpy is its only dependency): maintained exporters whose files
viewers are known to read, instead of about 100 lines of hand-written binary layout here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes
from torch import Tensor
from tqdm.auto import tqdm
from trimesh.exchange.gltf import export_glb
from trimesh.exchange.ply import export_ply
from trimesh.visual import TextureVisuals
from trimesh.visual.color import srgb_to_linear, to_rgba
from trimesh.visual.material import PBRMaterial

from hfgi3d.generator.renderer import query_planes
from hfgi3d.io import write_bytes_atomic

if TYPE_CHECKING:
    from hfgi3d.generator.triplane import TriPlaneGenerator

EG3D_SIGMA_LEVEL = 10.0
"""Iso-level on the density logit that EG3D's ``gen_samples.py --shapes`` uses."""

FieldFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""World points ``M×3`` → (density logits ``sigma`` M, colours ``rgb`` M×3 in [0, 1])."""


@dataclass(frozen=True)
class VoxelGrid:
    """Where the samples of a ``resolution³`` grid lie: voxel centres of a cube centred at 0."""

    box_size: float
    resolution: int

    def __post_init__(self) -> None:
        if self.resolution < 2 or self.box_size <= 0:
            raise ValueError(f"need resolution >= 2 and box_size > 0, got {self.resolution} and {self.box_size}")

    @property
    def voxel_size(self) -> float:
        return self.box_size / self.resolution

    @property
    def first_centre(self) -> float:
        """World coordinate (on each axis) of the centre of voxel ``[0, 0, 0]``."""
        return -self.box_size / 2 + self.voxel_size / 2

    def centres_world(self, flat_indices: Tensor) -> Tensor:
        """Voxel centres ``M×3`` of flat (row-major ``[i, j, k]``) indices ``M``."""
        d = self.resolution
        ijk = torch.stack([flat_indices // (d * d), (flat_indices // d) % d, flat_indices % d], dim=-1)  # M×3
        return self.first_centre + ijk.to(torch.float32) * self.voxel_size


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices_world`` V×3 float32, ``faces`` F×3 int64, ``vertex_colors`` V×3 uint8."""

    vertices_world: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray


def generator_field(generator: TriPlaneGenerator, ws: Tensor, noise_mode: str = "const") -> FieldFn:
    """The density/colour field of one latent: tri-planes computed once, queried point-wise.

    ``ws`` is ``1×num_ws×w_dim``; the returned function runs without autograd.
    """
    if ws.ndim != 3 or len(ws) != 1:
        raise ValueError(f"ws must be 1×num_ws×w_dim (one latent), got shape {tuple(ws.shape)}")
    with torch.no_grad():
        planes = generator.planes(ws, noise_mode)  # 1×3×32×R×R
    box_warp = generator.config.rendering.box_warp

    @torch.no_grad()
    def field(points_world: Tensor) -> tuple[Tensor, Tensor]:
        out = query_planes(planes, generator.decoder, points_world.to(planes)[None], box_warp)
        return out["sigma"][0, :, 0], out["rgb"][0, :, :3]

    return field


@torch.no_grad()
def sample_grid(field_fn: FieldFn, grid: VoxelGrid, chunk: int = 2**18, device: torch.device | None = None) -> Tensor:
    """Density logits of ``field_fn`` at the voxel centres of ``grid`` → ``D×D×D`` float32 (CPU).

    Points are queried in chunks of ``chunk`` on ``device``; a progress bar shows when there
    is more than one chunk.
    """
    n_points = grid.resolution**3
    sigma = torch.empty(n_points, dtype=torch.float32)
    starts = range(0, n_points, chunk)
    for start in tqdm(starts, desc="density grid", unit="chunk", disable=len(starts) < 2, leave=False):
        flat = torch.arange(start, min(start + chunk, n_points), device=device)
        sigma[start : start + len(flat)] = field_fn(grid.centres_world(flat))[0].float().cpu()
    return sigma.view(grid.resolution, grid.resolution, grid.resolution)


@torch.no_grad()
def mesh_from_grid(
    sigma: Tensor,
    grid: VoxelGrid,
    level: float = EG3D_SIGMA_LEVEL,
    color_fn: FieldFn | None = None,
    close_boundary: bool = True,
    chunk: int = 2**18,
    device: torch.device | None = None,
) -> Mesh:
    """Marching cubes of the ``{sigma = level}`` surface of a ``D×D×D`` grid, in world units.

    Args:
        sigma: density logits sampled on ``grid`` (larger inside the object).
        grid: where the samples lie.
        level: iso-level on the logit; EG3D extracts its shapes at 10.
        color_fn: field whose ``rgb`` colours the vertices; grey (128) when ``None``.
        close_boundary: close shapes cut by the box with caps on the faces of the box
            (vertices stay inside the box); otherwise such shapes are left open there.
        chunk: points per ``color_fn`` call.
        device: where ``color_fn`` is queried.
    """
    volume = sigma.detach().float().cpu().numpy()
    low, high = float(volume.min()), float(volume.max())
    if not low < level < high:
        raise ValueError(
            f"no surface at level {level:g}: sigma range [{low:.4g}, {high:.4g}]; pick a level inside the range"
        )
    origin = grid.first_centre
    if close_boundary:
        # A shell of voxels whose values mirror the border ones about the level puts the caps
        # exactly on the faces of the box; empty border voxels keep an empty shell.
        volume = np.pad(volume, 1, mode="edge")
        shell = np.ones(volume.shape, dtype=bool)
        shell[1:-1, 1:-1, 1:-1] = False
        border = volume[shell]
        volume[shell] = np.where(border > level, 2 * level - border, np.minimum(border, level - 1.0))
        origin -= grid.voxel_size
    # gradient "descent": sigma decreases outwards. skimage's winding then makes the
    # right-hand face normals point inwards, hence the flip to counter-clockwise from outside.
    vertices, faces, _, _ = marching_cubes(volume, level=level, spacing=(grid.voxel_size,) * 3)
    vertices_world = (vertices + origin).astype(np.float32)
    faces = np.ascontiguousarray(faces[:, ::-1], dtype=np.int64)
    if color_fn is None:
        colors = np.full_like(vertices_world, 128, dtype=np.uint8)
    else:
        points = torch.from_numpy(vertices_world)
        rgb = torch.cat([color_fn(p.to(device))[1].float().cpu() for p in points.split(chunk)])  # V×3
        colors = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Mesh(vertices_world, faces, colors)


def write_ply(mesh: Mesh, path: str | os.PathLike[str]) -> None:
    """Write a binary little-endian PLY atomically: x, y, z float; red, green, blue (sRGB), alpha (255) uchar."""
    # process=False here and below: vertices and faces stay exactly as given (no merging or repair)
    shape = trimesh.Trimesh(
        mesh.vertices_world, mesh.faces, vertex_colors=mesh.vertex_colors, process=False, validate=False
    )
    write_bytes_atomic(path, export_ply(shape, encoding="binary"))


def write_glb(mesh: Mesh, path: str | os.PathLike[str]) -> None:
    """Write a binary glTF 2.0 (``.glb``) triangle mesh with vertex colours, atomically.

    ``POSITION`` is float32 (world units, y-up as glTF expects), faces stay counter-clockwise
    from outside (glTF's front faces). ``COLOR_0`` is normalised ``uint8`` RGBA and, as glTF
    requires, linear: the sRGB colours are decoded first (trimesh stores the bytes it is given),
    which merges the darkest sRGB levels (0-6 → 0). The material is matte (metallic 0, roughness
    1): glTF's default one is fully metallic, which three.js viewers such as W&B's ``Object3D``
    render almost black whatever the vertex colours.
    """
    linear = np.round(srgb_to_linear(mesh.vertex_colors) * 255).astype(np.uint8)  # V×3
    visual = TextureVisuals(material=PBRMaterial(metallicFactor=0.0, roughnessFactor=1.0))
    visual.vertex_attributes["color"] = to_rgba(linear)  # V×4, written as COLOR_0
    shape = trimesh.Trimesh(mesh.vertices_world, mesh.faces, visual=visual, process=False, validate=False)
    write_bytes_atomic(path, export_glb(trimesh.Scene(shape)))
