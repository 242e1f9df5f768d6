"""Shape extraction: density on a voxel grid, marching cubes, vertex colours, PLY and GLB files.

Convention:
    Everything is in world units (see :mod:`hfgi3d.cameras`: y-up, head near the origin).
    The grid covers the cube ``[-box_size/2, box_size/2]³`` (by default the tri-plane box,
    ``box_size = box_warp``) with ``D³`` voxels of edge ``box_size / D``; sample
    ``[i, j, k]`` is the density logit at the voxel *centre*
    ``(x_i, y_j, z_k) = -box_size/2 + (index + 0.5) · box_size / D``, i.e. the first index
    is ``x``, the second ``y`` and the third ``z``. ``sigma`` is the decoder's raw logit;
    the rendered density is ``softplus(sigma - 1)``.
    Mesh faces are counter-clockwise seen from outside, so ``(v1 - v0) × (v2 - v0)`` points
    away from the dense interior. Vertex colours are the decoder's first three feature
    channels (``[0, 1]``) at the vertices, stored as ``uint8``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from skimage.measure import marching_cubes
from torch import Tensor
from tqdm.auto import tqdm

from hfgi3d.generator.renderer import query_planes

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


def density_grid(
    generator: TriPlaneGenerator,
    ws: Tensor,
    resolution: int = 128,
    box_size: float | None = None,
    chunk: int = 2**18,
    noise_mode: str = "const",
) -> tuple[Tensor, VoxelGrid]:
    """The generator's density logits ``sigma`` on a ``resolution³`` grid of voxel centres.

    Args:
        generator: an EG3D generator.
        ws: ``1×num_ws×w_dim`` latent.
        resolution: voxels per axis ``D``.
        box_size: edge of the sampled cube (world units); the tri-plane box ``box_warp`` by default.
        chunk: points per decoder call.
        noise_mode: noise of the synthesis network.

    Returns:
        ``(sigma D×D×D float32 on the CPU, grid)``; ``sigma[i, j, k]`` is the logit at the
        centre ``(x_i, y_j, z_k)`` of voxel ``[i, j, k]`` (see the module docstring).
    """
    grid = VoxelGrid(generator.config.rendering.box_warp if box_size is None else box_size, resolution)
    return sample_grid(generator_field(generator, ws, noise_mode), grid, chunk, ws.device), grid


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


def mesh_from_field(
    field_fn: FieldFn,
    box_size: float,
    resolution: int = 128,
    level: float = EG3D_SIGMA_LEVEL,
    close_boundary: bool = True,
    chunk: int = 2**18,
    device: torch.device | None = None,
) -> Mesh:
    """Sample ``field_fn`` on a ``resolution³`` grid over ``[-box_size/2, box_size/2]³`` and mesh it."""
    grid = VoxelGrid(box_size, resolution)
    sigma = sample_grid(field_fn, grid, chunk, device)
    return mesh_from_grid(sigma, grid, level, field_fn, close_boundary, chunk, device)


def extract_mesh(
    generator: TriPlaneGenerator,
    ws: Tensor,
    resolution: int = 128,
    level: float = EG3D_SIGMA_LEVEL,
    box_size: float | None = None,
    close_boundary: bool = True,
    chunk: int = 2**18,
    noise_mode: str = "const",
) -> Mesh:
    """Coloured mesh of the ``{sigma = level}`` surface of one latent ``ws`` (``1×num_ws×w_dim``).

    See :func:`density_grid` for the grid and :func:`mesh_from_grid` for the arguments;
    ``level`` defaults to EG3D's 10 on the density logit.
    """
    field = generator_field(generator, ws, noise_mode)
    grid = VoxelGrid(generator.config.rendering.box_warp if box_size is None else box_size, resolution)
    sigma = sample_grid(field, grid, chunk, ws.device)
    return mesh_from_grid(sigma, grid, level, field, close_boundary, chunk, ws.device)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def write_ply(mesh: Mesh, path: str | os.PathLike[str]) -> None:
    """Write a binary little-endian PLY (x, y, z float; red, green, blue uchar; int face lists) atomically."""
    path = Path(path)
    n_vertices, n_faces = len(mesh.vertices_world), len(mesh.faces)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment hfgi3d mesh, world units, y-up\n"
        f"element vertex {n_vertices}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {n_faces}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vertices = np.empty(n_vertices, dtype=[("xyz", "<f4", (3,)), ("rgb", "u1", (3,))])
    vertices["xyz"] = mesh.vertices_world
    vertices["rgb"] = mesh.vertex_colors
    faces = np.empty(n_faces, dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    faces["count"] = 3
    faces["indices"] = mesh.faces
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertices.tobytes())
            f.write(faces.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_GLB_MAGIC = 0x46546C67  # "glTF"
_GLB_VERSION = 2
_GLB_CHUNK_JSON = 0x4E4F534A  # "JSON"
_GLB_CHUNK_BIN = 0x004E4942  # "BIN\0"
_GL_FLOAT, _GL_UNSIGNED_INT = 5126, 5125
_GL_ARRAY_BUFFER, _GL_ELEMENT_ARRAY_BUFFER = 34962, 34963
_GL_TRIANGLES = 4
_SRGB_KNEE, _SRGB_LINEAR_SLOPE, _SRGB_OFFSET, _SRGB_GAMMA = 0.04045, 12.92, 0.055, 2.4


def _srgb_to_linear(colors_uint8: np.ndarray) -> np.ndarray:
    """sRGB-encoded ``uint8`` colours → linear ``float32`` in ``[0, 1]`` (glTF's ``COLOR_0`` is linear)."""
    c = colors_uint8.astype(np.float32) / 255
    curve = ((c + _SRGB_OFFSET) / (1 + _SRGB_OFFSET)) ** _SRGB_GAMMA
    return np.where(c <= _SRGB_KNEE, c / _SRGB_LINEAR_SLOPE, curve).astype(np.float32)


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def write_glb(mesh: Mesh, path: str | os.PathLike[str]) -> None:
    """Write a binary glTF 2.0 (``.glb``) triangle mesh with vertex colours, atomically.

    One buffer holds ``POSITION`` (float32 VEC3, world units, y-up as glTF expects),
    ``COLOR_0`` (float32 VEC3, linear; the mesh's sRGB colours are decoded) and ``uint32``
    indices; faces stay counter-clockwise from outside (glTF's front faces). Browsers,
    Blender and W&B's ``Object3D`` viewer open it.
    """
    path = Path(path)
    positions = np.ascontiguousarray(mesh.vertices_world, dtype="<f4")
    colors = np.ascontiguousarray(_srgb_to_linear(mesh.vertex_colors), dtype="<f4")
    indices = np.ascontiguousarray(mesh.faces, dtype="<u4")
    blobs = [positions.tobytes(), colors.tobytes(), indices.tobytes()]
    offsets = np.cumsum([0] + [len(blob) for blob in blobs])
    targets = (_GL_ARRAY_BUFFER, _GL_ARRAY_BUFFER, _GL_ELEMENT_ARRAY_BUFFER)
    views = [
        {"buffer": 0, "byteOffset": int(offset), "byteLength": len(blob), "target": target}
        for offset, blob, target in zip(offsets, blobs, targets, strict=False)
    ]
    has_vertices = len(positions) > 0
    accessors = [
        {
            "bufferView": 0,
            "componentType": _GL_FLOAT,
            "count": len(positions),
            "type": "VEC3",
            "min": positions.min(0).tolist() if has_vertices else [0.0] * 3,
            "max": positions.max(0).tolist() if has_vertices else [0.0] * 3,
        },
        {"bufferView": 1, "componentType": _GL_FLOAT, "count": len(colors), "type": "VEC3"},
        {"bufferView": 2, "componentType": _GL_UNSIGNED_INT, "count": indices.size, "type": "SCALAR"},
    ]
    document = {
        "asset": {"version": "2.0", "generator": "hfgi3d"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [
            {"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2, "mode": _GL_TRIANGLES}]}
        ],
        "buffers": [{"byteLength": int(offsets[-1])}],
        "bufferViews": views,
        "accessors": accessors,
    }
    json_chunk = _pad4(json.dumps(document, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = _pad4(b"".join(blobs), b"\0")
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<III", _GLB_MAGIC, _GLB_VERSION, total))
            f.write(struct.pack("<II", len(json_chunk), _GLB_CHUNK_JSON) + json_chunk)
            f.write(struct.pack("<II", len(bin_chunk), _GLB_CHUNK_BIN) + bin_chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_ply(path: str | os.PathLike[str]) -> Mesh:
    """Read a binary little-endian triangle PLY with float/double ``x, y, z`` and optional uchar colours."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic or 'end_header' line)")
    lines = [line.split() for line in data[:end].decode("ascii").splitlines()[1:]]
    elements: list[tuple[str, int, list[list[str]]]] = []
    for words in lines:
        if words[:1] == ["format"] and words[1:] != ["binary_little_endian", "1.0"]:
            raise ValueError(f"{path}: only 'format binary_little_endian 1.0' is supported, got {' '.join(words)}")
        if words[:1] == ["element"]:
            elements.append((words[1], int(words[2]), []))
        elif words[:1] == ["property"]:
            elements[-1][2].append(words[1:])
    offset = end + len(b"end_header\n")
    arrays: dict[str, np.ndarray] = {}
    for name, count, properties in elements:
        if properties and properties[0][0] == "list":
            _, count_type, index_type, _ = properties[0]
            dtype = np.dtype([("count", _PLY_TYPES[count_type]), ("indices", "<" + _PLY_TYPES[index_type], (3,))])
        else:
            dtype = np.dtype([(prop[1], "<" + _PLY_TYPES[prop[0]]) for prop in properties])
        arrays[name] = np.frombuffer(data, dtype, count, offset)
        offset += dtype.itemsize * count
    vertices, faces = arrays["vertex"], arrays.get("face")
    if faces is not None and np.any(faces["count"] != 3):
        raise ValueError(f"{path}: only triangle faces are supported")
    names = vertices.dtype.names or ()
    colors = (
        np.stack([vertices[c] for c in ("red", "green", "blue")], -1).astype(np.uint8)
        if "red" in names
        else np.full((len(vertices), 3), 128, dtype=np.uint8)
    )
    return Mesh(
        np.stack([vertices[c] for c in "xyz"], -1).astype(np.float32),
        np.zeros((0, 3), np.int64) if faces is None else faces["indices"].astype(np.int64),
        colors,
    )
