"""Depth-map geometry: round trips, identity warps, an analytic occluder scene, masks and blending."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from hfgi3d import geometry
from hfgi3d.cameras import FFHQ_FOCAL, orbit_c25, pixel_rays, split_c25
from hfgi3d.geometry import (
    alpha_blend,
    backward_warp,
    difference_mask,
    erode_mask,
    feather_mask,
    point_normals,
    poisson_blend,
    project_points,
    unproject_depth,
    upsample_depth,
    visibility_mask,
)

# analytic scene: a background plane behind the pivot and a sphere floating in front of it
PLANE_Z = -0.3
SPHERE_CENTRE = (0.0, 0.0, 0.35)
SPHERE_RADIUS = 0.12
SCENE_RESOLUTION = 96
NOVEL_YAW_RAD = 0.35
GRAZING_COS = 0.3  # ≈ 73°: beyond this a src pixel covers too much of the sphere for a 1 px test

devices = [pytest.param("cpu")]
if torch.cuda.is_available():
    devices.append(pytest.param("cuda", marks=pytest.mark.gpu))


def _cameras(batch: int) -> torch.Tensor:
    """``batch`` different EG3D cameras around the frontal view."""
    return orbit_c25(torch.linspace(-0.3, 0.25, batch), torch.linspace(0.1, -0.2, batch))


def _sphere_hit(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Distance along unit ``directions`` to the first sphere hit (``inf`` if none). ``…×3`` → ``…``."""
    offsets = origins - torch.tensor(SPHERE_CENTRE, dtype=origins.dtype)
    half_b = (offsets * directions).sum(-1)
    discriminant = half_b**2 - (offsets.square().sum(-1) - SPHERE_RADIUS**2)
    t = -half_b - discriminant.clamp_min(0).sqrt()
    return torch.where((discriminant > 0) & (t > 0), t, torch.full_like(t, float("inf")))


def _raycast(
    c25: torch.Tensor, resolution: int, with_sphere: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth (along unit rays), hit points and normals of the scene: ``1×1×R×R``, ``R²×3``, ``R²×3``."""
    cam2world, intrinsics = split_c25(c25.double())
    origins, directions = (x[0] for x in pixel_rays(cam2world, intrinsics, resolution))  # R²×3 each
    t_plane = (PLANE_Z - origins[:, 2]) / directions[:, 2]
    t_sphere = _sphere_hit(origins, directions) if with_sphere else torch.full_like(t_plane, float("inf"))
    depth = torch.minimum(t_plane, t_sphere)
    points = origins + depth[:, None] * directions
    sphere_normals = (points - torch.tensor(SPHERE_CENTRE, dtype=points.dtype)) / SPHERE_RADIUS
    plane_normals = torch.tensor([0.0, 0.0, 1.0], dtype=points.dtype).expand_as(points)
    normals = torch.where((t_sphere < t_plane)[:, None], sphere_normals, plane_normals)
    return depth.reshape(1, 1, resolution, resolution), points, normals


def _ground_truth_visibility(
    points: torch.Tensor, normals: torch.Tensor, c25_src: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Analytic ``(unoccluded, inside, facing)`` of scene points (``R²×3``) for the src camera: bool ``R²`` each."""
    cam2world = split_c25(c25_src.double())[0][0]
    origin = cam2world[:3, 3]
    segment = points - origin
    length = segment.norm(dim=-1)
    rays = segment / length[:, None]
    unoccluded = _sphere_hit(origin.expand_as(rays), rays) >= length - 1e-6
    points_cam = segment @ cam2world[:3, :3]  # world→camera: Rᵀ · (X − o) for each row
    uv = FFHQ_FOCAL * points_cam[:, :2] / points_cam[:, 2:] + 0.5
    inside = (uv >= 0).all(-1) & (uv <= 1).all(-1) & (points_cam[:, 2] > 0)
    facing = -(normals * rays).sum(-1) >= GRAZING_COS
    return unoccluded, inside, facing


# ---------------------------------------------------------------------------------------------- projection


@pytest.mark.parametrize("batch", [1, 2])
def test_unproject_then_project_returns_pixel_centres_and_depths(batch: int) -> None:
    torch.manual_seed(0)
    c25 = _cameras(batch)
    depth = 2.0 + torch.rand(batch, 1, 5, 5)
    projection = project_points(unproject_depth(depth, c25), c25, resolution=5)
    rows, cols = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    torch.testing.assert_close(projection.uv_px, torch.stack((cols, rows)).expand(batch, 2, 5, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(projection.distance, depth, atol=1e-5, rtol=0)
    expected_grid = torch.stack((2 * (cols + 0.5) / 5 - 1, 2 * (rows + 0.5) / 5 - 1), dim=-1)
    torch.testing.assert_close(projection.grid, expected_grid.expand(batch, 5, 5, 2), atol=1e-5, rtol=0)
    assert bool(projection.inside.all())


def test_depth_is_distance_along_the_ray_not_z() -> None:
    c25 = orbit_c25(0.0, 0.0)
    depth, points, _ = _raycast(c25, 8, with_sphere=False)
    torch.testing.assert_close(unproject_depth(depth, c25.double()).permute(0, 2, 3, 1).reshape(-1, 3), points)
    assert torch.allclose(points[:, 2], torch.full_like(points[:, 2], PLANE_Z))
    assert depth.std() > 1e-3  # a fronto-parallel plane is at varying distances along the rays


def test_points_behind_the_camera_are_outside() -> None:
    c25 = orbit_c25(0.0, 0.0)
    behind = torch.tensor([0.0, 0.0, 3.5]).reshape(1, 3, 1, 1)  # the camera sits at z = 2.7, looking to -z
    projection = project_points(behind, c25, resolution=5)
    assert not bool(projection.inside.any())
    assert bool((projection.grid == -2).all())


def test_point_normals_of_a_plane_face_the_camera() -> None:
    c25 = orbit_c25(0.2, -0.1)
    depth, _, _ = _raycast(c25, 8)
    normals = point_normals(unproject_depth(depth, c25.double()))
    plane = depth.flatten() > 2.8  # the sphere is nearer; plane pixels next to it must not see it
    assert 0 < int(plane.sum()) < 64
    expected = torch.tensor([0.0, 0.0, 1.0], dtype=normals.dtype)
    torch.testing.assert_close(normals.permute(0, 2, 3, 1).reshape(-1, 3)[plane], expected.expand(int(plane.sum()), 3))


# ------------------------------------------------------------------------------------------------- warping


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("batch", [1, 2])
def test_warp_at_the_input_pose_is_the_identity(batch: int, device: str) -> None:
    torch.manual_seed(0)
    c25 = _cameras(batch).to(device)
    depth = 2.0 + torch.rand(batch, 1, 5, 5, device=device)  # any depth: every point projects to its own pixel
    image = torch.rand(batch, 3, 5, 5, device=device)
    warped, inside = backward_warp(image, depth, c25, c25)
    torch.testing.assert_close(warped, image, atol=1e-5, rtol=0)
    assert bool((inside == 1).all())
    # random depth has arbitrary normals, so switch the grazing test off; the z-buffer test passes everywhere
    assert bool((visibility_mask(depth, c25, depth, c25, grazing_cos=-1.0) == 1).all())


@pytest.mark.parametrize("batch", [1, 2])
def test_visibility_at_the_input_pose_of_a_smooth_surface_is_all_ones(batch: int) -> None:
    c25 = _cameras(batch)
    depth = torch.cat([_raycast(c25[i : i + 1], 16, with_sphere=False)[0] for i in range(batch)]).float()
    assert bool((visibility_mask(depth, c25, depth, c25, grazing_cos=GRAZING_COS) == 1).all())


def test_backward_warp_gradcheck_wrt_image() -> None:
    torch.manual_seed(0)
    c25_src, c25_dst = orbit_c25(0.0, 0.0).double(), orbit_c25(0.1, 0.05).double()
    depth = 2.4 + 0.1 * torch.rand(1, 1, 5, 5, dtype=torch.float64)
    image = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: backward_warp(x, depth, c25_dst, c25_src)[0], (image,))


def test_visibility_of_an_analytic_occluder_matches_ray_casting() -> None:
    c25_src, c25_dst = orbit_c25(0.0, 0.0), orbit_c25(NOVEL_YAW_RAD, 0.0)
    depth_src, _, _ = _raycast(c25_src, SCENE_RESOLUTION)
    depth_dst, points_dst, normals_dst = _raycast(c25_dst, SCENE_RESOLUTION)
    mask = visibility_mask(depth_src.float(), c25_src, depth_dst.float(), c25_dst, grazing_cos=GRAZING_COS)
    unoccluded, inside, facing = (
        x.reshape(mask.shape) for x in _ground_truth_visibility(points_dst, normals_dst, c25_src)
    )
    expected = unoccluded & inside & facing
    agreement = (mask.bool() == expected).double().mean().item()
    assert agreement >= 0.98, f"only {agreement:.2%} of pixels agree with ray casting"
    false_visible = (mask.bool() & ~expected).double().mean().item()
    assert false_visible <= 0.001, f"{false_visible:.2%} of pixels wrongly take input colours"
    # background that the sphere hides from the input camera but the novel camera sees
    on_plane = (points_dst[:, 2] - PLANE_Z).abs().reshape(mask.shape) < 1e-6
    disoccluded = on_plane & inside & ~unoccluded
    assert int(disoccluded.sum()) > 500, "the scene should have a sizeable disoccluded region"
    assert not bool(mask[disoccluded].any()), "disoccluded background behind the sphere must be marked occluded"
    assert mask[on_plane & expected].mean() > 0.97  # and the background seen by both cameras is visible


# ---------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("batch", [1, 2])
def test_erosion_removes_exactly_the_rectangle_border(batch: int) -> None:
    mask = torch.zeros(batch, 1, 7, 9)
    mask[:, :, 1:6, 2:8] = 1
    expected = torch.zeros_like(mask)
    expected[:, :, 2:5, 3:7] = 1
    assert torch.equal(erode_mask(mask, 1), expected)
    assert torch.equal(erode_mask(mask, 0), mask)


def test_erosion_ignores_the_image_border() -> None:
    mask = torch.ones(1, 1, 3, 5)
    assert torch.equal(erode_mask(mask, 2), mask)


@pytest.mark.parametrize("pixels", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_erosion_is_a_min_filter_that_ignores_outside_pixels(batch: int, pixels: int) -> None:
    """Soft masks too, against scipy's grey erosion with +inf outside the image (never the minimum)."""
    mask = torch.rand(batch, 1, 3, 5, generator=torch.Generator().manual_seed(pixels), dtype=torch.float64)
    size = 2 * pixels + 1
    expected = scipy.ndimage.grey_erosion(mask.numpy(), size=(1, 1, size, size), mode="constant", cval=np.inf)
    assert torch.equal(erode_mask(mask, pixels), torch.from_numpy(expected))


def test_feathering_keeps_the_interior_and_exterior() -> None:
    radius = 2
    mask = torch.zeros(2, 1, 24, 30)
    mask[:, :, 4:20, 5:26] = 1
    alpha = feather_mask(mask, radius)
    assert bool(((alpha >= 0) & (alpha <= 1)).all())
    assert bool((alpha[mask == 0] == 0).all())  # never grows the mask
    interior = erode_mask(mask, 2 * radius)
    assert bool((alpha[interior == 1] == 1).all())
    assert bool((alpha[(mask == 1) & (interior == 0)] < 1).all())  # a ramp on the inner band
    row = alpha[0, 0, 12, 5 : 5 + 2 * radius + 1]
    assert bool((row.diff() > 0).all())  # rising away from the edge
    assert row[radius - 1].item() < 0.5 < row[radius + 1].item()


# ------------------------------------------------------------------------------------------ depth upsampling


@pytest.mark.parametrize("batch", [1, 2])
def test_upsampling_a_step_never_mixes_the_layers(batch: int) -> None:
    depth = torch.full((batch, 1, 3, 5), 3.0)
    depth[:, :, :, :2] = 2.0
    depth[:, :, 2, :] = 2.0
    upsampled = upsample_depth(depth, (12, 20))
    near_a_layer = ((upsampled - 2.0).abs() < 1e-6) | ((upsampled - 3.0).abs() < 1e-6)
    assert bool(near_a_layer.all())
    assert upsampled.shape == (batch, 1, 12, 20)


@pytest.mark.parametrize("batch", [1, 2])
def test_upsampling_a_smooth_ramp_is_bilinear(batch: int) -> None:
    torch.manual_seed(0)
    ramp = 2.5 + 0.001 * torch.arange(15.0).reshape(1, 1, 3, 5) + 1e-4 * torch.rand(batch, 1, 3, 5)
    expected = F.interpolate(ramp, size=(12, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_depth(ramp, (12, 20)), expected, atol=1e-6, rtol=0)
    expected = F.interpolate(ramp, size=(7, 9), mode="bilinear", align_corners=False)  # non-integer factors
    torch.testing.assert_close(upsample_depth(ramp, (7, 9)), expected, atol=1e-6, rtol=0)


def test_guided_upsampling_puts_the_step_on_the_image_edge() -> None:
    depth = torch.full((1, 1, 4, 4), 3.0)
    depth[..., :2] = 2.0  # the step lies between low-res columns 1 and 2, i.e. output columns 7 | 8
    image = torch.zeros(1, 3, 16, 16)
    image[..., 7:] = 1.0  # the image's edge is one output column earlier
    assert torch.equal(upsample_depth(depth, 16)[0, 0, 0, 6:10], torch.tensor([2.0, 2.0, 3.0, 3.0]))
    assert torch.equal(upsample_depth(depth, 16, image=image)[0, 0, 0, 6:10], torch.tensor([2.0, 3.0, 3.0, 3.0]))


# ------------------------------------------------------------------------------------------------ blending


@pytest.mark.parametrize("batch", [1, 2])
def test_alpha_blend_limits_and_convexity(batch: int) -> None:
    torch.manual_seed(0)
    visible, occluded = torch.rand(batch, 3, 12, 16), torch.rand(batch, 3, 12, 16)
    assert torch.equal(alpha_blend(visible, occluded, torch.ones(batch, 1, 12, 16), radius=2), visible)
    assert torch.equal(alpha_blend(visible, occluded, torch.zeros(batch, 1, 12, 16), radius=2), occluded)
    mask = torch.zeros(batch, 1, 12, 16)
    mask[:, :, 2:10, 3:12] = 1
    blended = alpha_blend(visible, occluded, mask, radius=2)
    low, high = torch.minimum(visible, occluded), torch.maximum(visible, occluded)
    assert bool(((blended >= low - 1e-6) & (blended <= high + 1e-6)).all())
    assert torch.equal(blended[mask.expand_as(blended) == 0], occluded[mask.expand_as(blended) == 0])


def test_alpha_blend_gradcheck() -> None:
    torch.manual_seed(0)
    visible = torch.rand(1, 2, 8, 9, dtype=torch.float64, requires_grad=True)
    occluded = torch.rand(1, 2, 8, 9, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(1, 1, 8, 9, dtype=torch.float64)
    mask[:, :, 1:7, 2:8] = 1
    assert torch.autograd.gradcheck(lambda v, o: alpha_blend(v, o, mask, radius=1), (visible, occluded))


def _poisson_reference(visible: np.ndarray, occluded: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked 5-point Poisson system of one H×W channel, assembled pixel by pixel and solved directly."""
    height, width = mask.shape
    index = -np.ones(mask.shape, dtype=np.int64)
    index[mask] = np.arange(mask.sum())
    rows, cols, values, rhs = [], [], [], np.zeros(mask.sum())
    for r, c in zip(*np.nonzero(mask), strict=True):
        p = index[r, c]
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rn, cn = r + dr, c + dc
            if not (0 <= rn < height and 0 <= cn < width):
                continue  # the image border is not a boundary
            rows.append(p), cols.append(p), values.append(1.0)
            rhs[p] += visible[r, c] - visible[rn, cn]
            if mask[rn, cn]:
                rows.append(p), cols.append(index[rn, cn]), values.append(-1.0)
            else:
                rhs[p] += occluded[rn, cn]
    matrix = scipy.sparse.csr_matrix((values, (rows, cols)), shape=(len(rhs), len(rhs)))
    result = occluded.copy()
    result[mask] = scipy.sparse.linalg.spsolve(matrix, rhs)
    return result


def _blob_mask(batch: int, height: int, width: int) -> torch.Tensor:
    """An irregular mask that touches the image border (so the border convention is exercised)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    blob = ((rows - 5) ** 2 / 30 + (cols - 10) ** 2 / 40 < 1) | ((rows < 3) & (cols > 12))
    masks = [blob, blob.flip(-1)][:batch]
    return torch.stack(masks)[:, None].float()


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("batch", [1, 2])
def test_poisson_blend_keeps_the_target_outside_the_mask(batch: int, device: str) -> None:
    torch.manual_seed(0)
    visible, occluded = torch.rand(batch, 3, 12, 16, device=device), torch.rand(batch, 3, 12, 16, device=device)
    mask = _blob_mask(batch, 12, 16).to(device)
    blended = poisson_blend(visible, occluded, mask)
    outside = mask.expand_as(blended) == 0
    assert torch.equal(blended[outside], occluded[outside])
    assert torch.equal(poisson_blend(visible, occluded, torch.zeros_like(mask)), occluded)
    torch.testing.assert_close(poisson_blend(visible, occluded, torch.ones_like(mask)), visible)  # no boundary


@pytest.mark.parametrize("batch", [1, 2])
def test_poisson_blend_of_an_offset_copy_returns_the_target(batch: int) -> None:
    # the guidance Δ(occluded + c) = Δ(occluded) and the boundary values are occluded's, so f = occluded = visible − c
    torch.manual_seed(0)
    occluded = torch.rand(batch, 3, 12, 16, dtype=torch.float64)
    visible = occluded + 0.7
    blended = poisson_blend(visible, occluded, _blob_mask(batch, 12, 16).double(), tol=1e-10)
    torch.testing.assert_close(blended, visible - 0.7, atol=1e-8, rtol=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_poisson_blend_matches_a_sparse_direct_solve(batch: int) -> None:
    torch.manual_seed(0)
    visible, occluded = torch.rand(batch, 3, 12, 16), torch.rand(batch, 3, 12, 16)
    mask = _blob_mask(batch, 12, 16)
    blended = poisson_blend(visible, occluded, mask, tol=1e-7)
    expected = np.empty(visible.shape)
    for b in range(batch):
        for c in range(3):
            expected[b, c] = _poisson_reference(
                visible[b, c].double().numpy(), occluded[b, c].double().numpy(), mask[b, 0].bool().numpy()
            )
    np.testing.assert_allclose(blended.numpy(), expected, atol=1e-4, rtol=0)


def _ring_mask(height: int, width: int) -> torch.Tensor:
    """``1×1×H×W``: a thick ring with a wavy outer edge (Ω with a hole, touching the border)."""
    rows, cols = torch.meshgrid(torch.arange(height) / height, torch.arange(width) / width, indexing="ij")
    radius_sq = (rows - 0.5).square() + (cols - 0.4).square()
    return ((radius_sq < (0.45 + 0.05 * torch.sin(9 * cols)) ** 2) & (radius_sq > 0.02)).float()[None, None]


def test_poisson_blend_matches_a_sparse_direct_solve_through_several_multigrid_levels() -> None:
    # odd sides, so every coarsening pads: 37×53 → 19×27 → 10×14 → 5×7
    torch.manual_seed(0)
    visible, occluded = torch.rand(1, 2, 37, 53, dtype=torch.float64), torch.rand(1, 2, 37, 53, dtype=torch.float64)
    mask = _ring_mask(37, 53).double()
    assert len(geometry._multigrid_levels(geometry._Stencil.of(mask, mask, mask))) == 4
    blended = poisson_blend(visible, occluded, mask, tol=1e-10)
    for c in range(2):
        expected = _poisson_reference(visible[0, c].numpy(), occluded[0, c].numpy(), mask[0, 0].bool().numpy())
        np.testing.assert_allclose(blended[0, c].numpy(), expected, atol=1e-8, rtol=0)


def test_the_multigrid_preconditioner_is_symmetric_positive_definite() -> None:
    # what conjugate gradients needs of it: <B u, v> = <u, B v> and <B u, u> > 0 on Ω
    torch.manual_seed(0)
    inside = _ring_mask(37, 53).double()
    right = torch.zeros_like(inside)
    right[..., :, :-1] = inside[..., :, :-1] * inside[..., :, 1:]
    down = torch.zeros_like(inside)
    down[..., :-1, :] = inside[..., :-1, :] * inside[..., 1:, :]
    degree = geometry._neighbour_sum(torch.ones_like(inside))
    levels = geometry._multigrid_levels(geometry._Stencil.of(inside * degree, right, down))
    u, v = (inside * torch.randn(1, 8, 37, 53, dtype=torch.float64) for _ in range(2))
    bu, bv = geometry._v_cycle(levels, u), geometry._v_cycle(levels, v)
    torch.testing.assert_close((bu * v).sum((-2, -1)), (u * bv).sum((-2, -1)), atol=1e-10, rtol=1e-10)
    assert ((bu * u).sum((-2, -1)) > 0).all()
    assert torch.equal(bu * (1 - inside), torch.zeros_like(bu))  # nothing leaks outside Ω


def test_difference_mask_thresholds_the_channel_norm() -> None:
    x = torch.zeros(2, 3, 1, 3)
    y = torch.zeros(2, 3, 1, 3)
    y[:, :, 0, 0] = torch.tensor([0.3, 0.4, 0.0])  # norm 0.5: on the threshold, kept
    y[:, :, 0, 1] = torch.tensor([0.3, 0.4, 0.1])  # norm > 0.5
    mask = difference_mask(x, y, threshold=0.5)
    assert mask.shape == (2, 1, 1, 3)
    assert torch.equal(mask, torch.tensor([1.0, 0.0, 1.0]).expand(2, 1, 1, 3))


def test_poisson_blend_does_not_depend_on_how_the_images_are_grouped() -> None:
    # images_per_solve only groups independent systems: one at a time (the CPU default) and all at
    # once (the GPU default) solve the same equations to the same tolerance.
    torch.manual_seed(0)
    visible, occluded = torch.rand(3, 3, 12, 16, dtype=torch.float64), torch.rand(3, 3, 12, 16, dtype=torch.float64)
    mask = torch.cat([_blob_mask(2, 12, 16), _blob_mask(1, 12, 16).flip(-2)]).double()
    one_by_one = poisson_blend(visible, occluded, mask, tol=1e-10, images_per_solve=1)
    together = poisson_blend(visible, occluded, mask, tol=1e-10, images_per_solve=3)
    torch.testing.assert_close(one_by_one, together, atol=1e-8, rtol=0)
    shared_mask = poisson_blend(visible, occluded, mask[:1], tol=1e-10)  # one mask for every image
    torch.testing.assert_close(shared_mask[0], one_by_one[0], atol=1e-8, rtol=0)
