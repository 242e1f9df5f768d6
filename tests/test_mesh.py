"""Shape extraction on analytic fields and a tiny generator, PLY and GLB round trips and video files."""

from __future__ import annotations

import gc
import json
import struct
from collections import Counter
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh
from torch import Tensor

from hfgi3d.cameras import frontal_c25
from hfgi3d.generator import TriPlaneGenerator, tiny_config
from hfgi3d.mesh import (
    FieldFn,
    Mesh,
    VoxelGrid,
    generator_field,
    mesh_from_grid,
    sample_grid,
    write_glb,
    write_ply,
)
from hfgi3d.video import save_image_grid, write_video

RADIUS = 0.3
SLOPE = 20.0  # sigma = SLOPE · (RADIUS − |x|): the iso-level 0 is the sphere of radius RADIUS
RESOLUTION = 32
BOX_SIZE = 1.0
VOXEL = BOX_SIZE / RESOLUTION


def _sphere_field(points_world: Tensor) -> tuple[Tensor, Tensor]:
    sigma = SLOPE * (RADIUS - torch.linalg.vector_norm(points_world, dim=-1))
    return sigma, (points_world + 0.5).clamp(0, 1)  # colour encodes the position


def _face_normals(mesh: Mesh) -> np.ndarray:
    tri = mesh.vertices_world[mesh.faces].astype(np.float64)  # F×3×3
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def _is_watertight(faces: np.ndarray) -> bool:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return set(Counter(map(tuple, edges.tolist())).values()) == {2}


def _mesh_from_field(
    field: FieldFn, box_size: float, resolution: int, level: float, close_boundary: bool = True
) -> Mesh:
    """Sample ``field`` on a ``resolution³`` grid and mesh it, as the outputs callback does."""
    grid = VoxelGrid(box_size, resolution)
    return mesh_from_grid(sample_grid(field, grid), grid, level, field, close_boundary)


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    return _mesh_from_field(_sphere_field, BOX_SIZE, RESOLUTION, level=0.0)


@pytest.fixture(scope="module")
def generator() -> TriPlaneGenerator:
    torch.manual_seed(0)
    return TriPlaneGenerator(tiny_config(plane_resolution=32)).eval()


@pytest.fixture(scope="module")
def ws(generator: TriPlaneGenerator) -> Tensor:
    z = torch.randn(1, generator.config.z_dim, generator=torch.Generator().manual_seed(3))
    return generator.mapping(z, frontal_c25()).detach()


def test_sphere_has_the_right_radius_centre_and_types(sphere: Mesh) -> None:
    assert sphere.vertices_world.dtype == np.float32 and sphere.vertices_world.shape[1] == 3
    assert sphere.faces.dtype == np.int64 and sphere.faces.shape[1] == 3
    assert sphere.vertex_colors.dtype == np.uint8 and sphere.vertex_colors.shape == sphere.vertices_world.shape
    radii = np.linalg.norm(sphere.vertices_world, axis=1)
    # a linear field is interpolated exactly along cube edges: far better than the voxel bound
    np.testing.assert_allclose(radii, RADIUS, atol=VOXEL / 4)
    np.testing.assert_allclose(sphere.vertices_world.mean(0), 0.0, atol=VOXEL / 10)
    assert _is_watertight(sphere.faces)


def test_sphere_faces_point_outwards(sphere: Mesh) -> None:
    centroids = sphere.vertices_world[sphere.faces].mean(1)
    outward = np.einsum("fi,fi->f", _face_normals(sphere), centroids) > 0
    assert outward.all()


def test_sphere_colours_are_the_field_rgb_at_the_vertices(sphere: Mesh) -> None:
    expected = np.clip(sphere.vertices_world + 0.5, 0, 1) * 255
    np.testing.assert_allclose(sphere.vertex_colors, expected, atol=0.5 + 1e-3)


def test_axis_order_of_an_ellipsoid() -> None:
    semi_axes = torch.tensor([0.4, 0.25, 0.15])

    def field(points_world: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - torch.linalg.vector_norm(points_world / semi_axes, dim=-1), torch.zeros_like(points_world)

    mesh = _mesh_from_field(field, BOX_SIZE, RESOLUTION, level=0.0)
    extent = mesh.vertices_world.max(0)
    np.testing.assert_allclose(extent, semi_axes.numpy(), atol=VOXEL)
    np.testing.assert_array_equal(mesh.vertex_colors, 0)


def test_box_size_and_world_units_of_an_off_centre_sphere() -> None:
    centre = torch.tensor([0.2, -0.1, 0.05])

    def field(points_world: Tensor) -> tuple[Tensor, Tensor]:
        return 0.12 - torch.linalg.vector_norm(points_world - centre, dim=-1), torch.ones_like(points_world)

    mesh = _mesh_from_field(field, 0.8, 32, level=0.0)
    radii = np.linalg.norm(mesh.vertices_world - centre.numpy(), axis=1)
    np.testing.assert_allclose(radii, 0.12, atol=0.8 / 32 / 4)
    np.testing.assert_array_equal(mesh.vertex_colors, 255)


def test_shapes_cut_by_the_box_are_closed_only_on_request() -> None:
    def half_space(points_world: Tensor) -> tuple[Tensor, Tensor]:
        return 0.1 - points_world[:, 0], torch.zeros_like(points_world)  # dense where x < 0.1

    closed = _mesh_from_field(half_space, BOX_SIZE, 8, level=0.0)
    assert _is_watertight(closed.faces)
    cap = closed.vertices_world[:, 0] < 0.1 - 1e-6
    assert np.abs(closed.vertices_world).max() <= BOX_SIZE / 2 + 1e-6
    np.testing.assert_allclose(np.abs(closed.vertices_world[cap]).max(1), BOX_SIZE / 2, atol=1e-6)  # on the box
    opened = _mesh_from_field(half_space, BOX_SIZE, 8, level=0.0, close_boundary=False)
    np.testing.assert_allclose(opened.vertices_world[:, 0], 0.1, atol=1e-6)
    assert not _is_watertight(opened.faces)


def test_level_outside_the_field_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no surface at level 10: sigma range \[-9\.\d+, 3\.\d+\]"):
        _mesh_from_field(_sphere_field, BOX_SIZE, 8, level=10.0)


def test_density_grid_samples_voxel_centres_in_xyz_order(generator: TriPlaneGenerator, ws: Tensor) -> None:
    grid = VoxelGrid(generator.config.rendering.box_warp, 6)
    sigma = sample_grid(generator_field(generator, ws), grid, chunk=50)  # several chunks
    assert sigma.shape == (6, 6, 6) and sigma.dtype == torch.float32
    centres = (torch.arange(6) + 0.5) / 6 - 0.5  # box_warp = 1
    ijk = torch.tensor([[0, 1, 5], [4, 2, 3], [5, 5, 0]])
    points = centres[ijk][None]  # 1×3×3
    expected = generator.sample_mixed(points, torch.zeros_like(points), ws)["sigma"][0, :, 0]
    torch.testing.assert_close(sigma[ijk[:, 0], ijk[:, 1], ijk[:, 2]], expected.detach())


def test_extract_mesh_from_a_random_generator(generator: TriPlaneGenerator, ws: Tensor) -> None:
    field = generator_field(generator, ws)
    grid = VoxelGrid(generator.config.rendering.box_warp, 20)
    sigma = sample_grid(field, grid)
    level = float(sigma.median())
    mesh = mesh_from_grid(sigma, grid, level, field)
    assert len(mesh.vertices_world) > 0 and len(mesh.faces) > 0
    assert np.isfinite(mesh.vertices_world).all()
    half_box = generator.config.rendering.box_warp / 2
    assert np.abs(mesh.vertices_world).max() <= half_box + 1e-6
    assert mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices_world)
    assert mesh.vertex_colors.dtype == np.uint8 and mesh.vertex_colors.std() > 0
    with pytest.raises(ValueError, match="no surface at level"):
        mesh_from_grid(sigma, grid, float(sigma.max()) + 1, field)


def test_ply_round_trip_is_exact(sphere: Mesh, tmp_path: Path) -> None:
    path = tmp_path / "sphere.ply"
    write_ply(sphere, path)
    data = path.read_bytes()
    header, _ = data.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {len(sphere.vertices_world)}" in lines
    assert f"element face {len(sphere.faces)}" in lines
    assert "property list uchar int vertex_indices" in lines
    assert [line for line in lines if line.startswith("property uchar")] == [
        f"property uchar {channel}" for channel in ("red", "green", "blue", "alpha")
    ]
    # x, y, z float32 and RGBA uint8 per vertex; a uchar count and three int32 indices per face
    assert len(data) == len(header) + len(b"end_header\n") + 16 * len(sphere.vertices_world) + 13 * len(sphere.faces)
    loaded = trimesh.load(path, process=False)
    assert isinstance(loaded, trimesh.Trimesh)
    np.testing.assert_array_equal(loaded.vertices, sphere.vertices_world)  # float32 values, exactly
    np.testing.assert_array_equal(loaded.faces, sphere.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], sphere.vertex_colors)
    assert (loaded.visual.vertex_colors[:, 3] == 255).all()
    assert [p.name for p in tmp_path.iterdir()] == ["sphere.ply"]  # no temporary file left


def test_glb_follows_the_gltf_binary_layout(sphere: Mesh, tmp_path: Path) -> None:
    """Parse the file by the glTF 2.0 spec (header, JSON chunk, BIN chunk, accessors) and compare."""
    path = tmp_path / "sphere.glb"
    write_glb(sphere, path)
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert (magic, version, total) == (0x46546C67, 2, len(data)) and total % 4 == 0
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    document = json.loads(data[20 : 20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942
    binary = data[28 + json_length : 28 + json_length + bin_length]
    primitive = document["meshes"][0]["primitives"][0]
    assert primitive["mode"] == 4  # triangles
    # matte: glTF's default material is fully metallic, which hides vertex colours in three.js viewers
    assert document["materials"][primitive["material"]]["pbrMetallicRoughness"]["metallicFactor"] == 0

    def read(accessor_index: int, width: int) -> np.ndarray:
        accessor = document["accessors"][accessor_index]
        view = document["bufferViews"][accessor["bufferView"]]
        dtype = {5121: "u1", 5125: "<u4", 5126: "<f4"}[accessor["componentType"]]
        components = {"VEC4": 4, "VEC3": 3, "SCALAR": 1}[accessor["type"]]
        offset = view["byteOffset"] + accessor.get("byteOffset", 0)
        values = np.frombuffer(binary, dtype, accessor["count"] * components, offset)
        return values.reshape(-1, width)

    positions = read(primitive["attributes"]["POSITION"], 3)
    np.testing.assert_array_equal(positions, sphere.vertices_world)
    accessor = document["accessors"][primitive["attributes"]["POSITION"]]
    np.testing.assert_allclose(accessor["min"], sphere.vertices_world.min(0))
    np.testing.assert_array_equal(read(primitive["indices"], 3), sphere.faces)
    color_accessor = document["accessors"][primitive["attributes"]["COLOR_0"]]
    assert color_accessor["componentType"] == 5121 and color_accessor["normalized"]  # uint8 read as [0, 1]
    rgba = read(primitive["attributes"]["COLOR_0"], 4)
    assert (rgba[:, 3] == 255).all()
    colors = rgba[:, :3] / 255
    srgb = sphere.vertex_colors.astype(np.float64) / 255
    brighter = srgb > 0.5
    assert (colors[brighter] < srgb[brighter]).all()  # linear values lie below their sRGB encodings
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)  # the sRGB decoding
    np.testing.assert_allclose(colors, linear, atol=0.5 / 255 + 1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ["sphere.glb"]


def test_glb_reads_back_with_trimesh(sphere: Mesh, tmp_path: Path) -> None:
    path = tmp_path / "sphere.glb"
    write_glb(sphere, path)
    scene = trimesh.load(path, process=False)
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 1
    (loaded,) = scene.geometry.values()  # not force="mesh": concatenating drops the colour attribute
    np.testing.assert_array_equal(loaded.vertices, sphere.vertices_world)
    np.testing.assert_array_equal(loaded.faces, sphere.faces)
    colors = loaded.visual.vertex_attributes["color"]  # with a material, COLOR_0 comes back as an attribute
    assert colors.shape == (len(sphere.vertices_world), 4) and (colors[:, 3] == 255).all()
    assert loaded.visual.material.metallicFactor == 0


def _frames(n: int = 5, h: int = 32, w: int = 48) -> Tensor:
    ramp = torch.linspace(-1, 1, n).view(n, 1, 1, 1)
    return ramp.expand(n, 3, h, w).clone()


# imageio-ffmpeg's reader leaves its pipes to the garbage collector
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_write_video_mp4_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "orbit.mp4"
    write_video(_frames(), path, fps=10)
    assert path.stat().st_size > 0
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["codec"] == "h264" and meta["size"] == (48, 32) and meta["fps"] == 10
    frames = np.stack([np.frombuffer(frame, np.uint8).reshape(32, 48, 3) for frame in reader])
    reader.close()
    assert frames.shape == (5, 32, 48, 3)
    assert frames[0].mean() < 30 and frames[-1].mean() > 225  # black to white ramp
    assert [p.name for p in tmp_path.iterdir()] == ["orbit.mp4"]
    gc.collect()


def test_write_video_gif_and_bad_extension(tmp_path: Path) -> None:
    path = tmp_path / "orbit.gif"
    write_video(_frames(3, 16, 17), path, fps=10)
    assert iio.imread(path, index=None).shape[:3] == (3, 16, 17)
    with pytest.raises(ValueError, match=r"extension must be one of \.mp4, \.gif"):
        write_video(_frames(), tmp_path / "orbit.avi")
    with pytest.raises(ValueError, match="even frame sizes"):
        write_video(_frames(2, 16, 17), tmp_path / "odd.mp4")


def test_save_image_grid(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    save_image_grid(_frames(6, 8, 10), path, nrow=3)
    image = iio.imread(path)
    assert image.shape == (16, 30, 3) and image.dtype == np.uint8
    assert image[0, 0, 0] == 0 and image[-1, -1, 0] == 255
