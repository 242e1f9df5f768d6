"""Depth-map geometry for pseudo-multi-view construction: lift, project, test visibility, warp, blend.

Every function is pure, batched and runs wherever its tensors are (CPU or GPU).

Convention:
    Cameras are EG3D ``c25`` labels (see :mod:`hfgi3d.cameras`): OpenCV ``cam2world``
    (x right, y down, z forward) and normalized intrinsics. A depth map is EG3D's
    ``image_depth``: for each pixel, the *distance along the unit ray* from the camera
    centre through the pixel centre (not the camera-space ``z``), so the pixel's 3D point is
    ``X = o + depth · r`` with ``(o, r)`` from :func:`hfgi3d.cameras.pixel_rays`. Depth maps
    are square, ``B×1×R×R``, as EG3D renders them; images and masks may be any ``H×W``.
    Pixel ``(col, row)`` has its centre at normalized coordinates ``((col + 0.5) / R,
    (row + 0.5) / R)``, i.e. at pixel coordinates ``(col, row)``; ``grid_sample`` coordinates
    are ``2 · normalized − 1`` and are always used with ``align_corners=False``. Masks are
    ``B×1×H×W`` floats in ``{0, 1}`` (1 = keep / visible).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from kornia.morphology import erosion
from torch import Tensor

from hfgi3d.cameras import pixel_rays, split_c25

_OUTSIDE_GRID = -2.0  # grid_sample coordinate given to points behind the camera: off the image
_MIN_Z_CAM = 1e-6  # points closer to the camera plane than this (world units) count as behind it
_SMOOTH_RATIO = 2.0  # forward/backward differences within this length ratio lie on one surface


class Projection(NamedTuple):
    """World points projected into a camera (see :func:`project_points`)."""

    uv_px: Tensor
    """``B×2×H×W`` pixel coordinates ``(col, row)``; pixel centres are at integers."""
    grid: Tensor
    """``B×H×W×2`` ``grid_sample`` coordinates (``align_corners=False``); ``-2`` behind the camera."""
    distance: Tensor
    """``B×1×H×W`` distance from the camera centre to each point (world units)."""
    inside: Tensor
    """``B×1×H×W`` bool: the point is in front of the camera and projects into the image."""


def _cameras(c25: Tensor, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``cam2world`` ``B×4×4`` and intrinsics ``B×3×3`` in ``like``'s dtype/device; ``1×25`` broadcasts."""
    cam2world, intrinsics = split_c25(c25.to(like))
    if len(cam2world) not in (1, batch):
        raise ValueError(f"camera labels hold {len(cam2world)} cameras for a batch of {batch}: pass 1 or {batch}")
    return cam2world.expand(batch, 4, 4), intrinsics.expand(batch, 3, 3)


def _square_resolution(depth: Tensor) -> int:
    if depth.ndim != 4 or depth.shape[1] != 1 or depth.shape[2] != depth.shape[3]:
        raise ValueError(f"expected a square depth map of shape B×1×R×R, got {tuple(depth.shape)}")
    return depth.shape[-1]


def unproject_depth(depth: Tensor, c25: Tensor) -> Tensor:
    """Lift a depth map to world points, ``X = o + depth · r`` at every pixel centre.

    Args:
        depth: ``B×1×R×R`` distance along each pixel's unit ray (EG3D's ``image_depth``),
            world units, positive.
        c25: ``B×25`` or ``1×25`` camera labels the depth was rendered from.

    Returns:
        ``B×3×R×R`` world points.

    Convention:
        Square images only, because the rays are those of :func:`hfgi3d.cameras.pixel_rays`
        (pixel centres at ``(i + 0.5) / R``, row-major).
    """
    resolution = _square_resolution(depth)
    batch = len(depth)
    cam2world, intrinsics = _cameras(c25, batch, depth)
    origins_world, directions_world = pixel_rays(cam2world, intrinsics, resolution)  # B×R²×3 each
    origins_world = origins_world.transpose(1, 2).reshape(batch, 3, resolution, resolution)
    directions_world = directions_world.transpose(1, 2).reshape(batch, 3, resolution, resolution)
    return origins_world + depth * directions_world  # B×3×R×R


def project_points(points_world: Tensor, c25: Tensor, resolution: int) -> Projection:
    """Project world points into a camera whose image is ``resolution × resolution`` pixels.

    Args:
        points_world: ``B×3×H×W`` world points (any layout; ``H×W`` need not be square).
        c25: ``B×25`` or ``1×25`` camera labels.
        resolution: ``R``, the camera's square image size in pixels; only ``uv_px`` and
            ``inside`` depend on it (``grid`` is resolution-free).

    Returns:
        A :class:`Projection`: pixel coordinates, ``grid_sample`` coordinates, the distance from
        the camera centre (comparable with a depth map of that camera) and the ``inside`` flag.

    Convention:
        Normalized image coordinates are ``K · (x/z, y/z, 1)`` with camera-space ``(x, y, z)``
        (the exact inverse of :func:`hfgi3d.cameras.pixel_rays`, skew included); pixel
        coordinates are ``normalized · R − 0.5`` so a pixel centre lands on an integer. A point
        is ``inside`` when ``z > 1e-6`` and its projection lies in the image rectangle
        ``[-0.5, R − 0.5]²`` (pixel coordinates), i.e. ``grid ∈ [-1, 1]²``. Points behind the
        camera get ``grid = -2`` so sampling them never reads the image.
    """
    batch = len(points_world)
    cam2world, intrinsics = _cameras(c25, batch, points_world)
    rotation, origin_world = cam2world[:, :3, :3], cam2world[:, :3, 3]
    offsets_world = points_world - origin_world[:, :, None, None]  # B×3×H×W
    distance = torch.linalg.vector_norm(offsets_world, dim=1, keepdim=True)  # B×1×H×W
    # world2cam rotation is the transpose of cam2world's (orthonormal look-at frames)
    points_cam = torch.einsum("bji,bjhw->bihw", rotation, offsets_world)  # B×3×H×W
    z_cam = points_cam[:, 2:3]
    in_front = z_cam > _MIN_Z_CAM
    xy_over_z = points_cam[:, :2] / torch.where(in_front, z_cam, torch.ones_like(z_cam))  # B×2×H×W
    homogeneous = torch.cat((xy_over_z, torch.ones_like(z_cam)), dim=1)  # B×3×H×W
    uv_ndc = torch.einsum("bij,bjhw->bihw", intrinsics[:, :2], homogeneous)  # B×2×H×W in [0, 1] on the image
    uv_px = uv_ndc * resolution - 0.5
    grid = torch.where(in_front, 2 * uv_ndc - 1, torch.full_like(uv_ndc, _OUTSIDE_GRID))  # B×2×H×W
    inside = in_front & (grid.abs() <= 1).all(dim=1, keepdim=True)
    return Projection(uv_px, grid.permute(0, 2, 3, 1), distance, inside)


def point_normals(points_world: Tensor) -> Tensor:
    """Unit surface normals of an image-shaped point map by edge-aware finite differences.

    Args:
        points_world: ``B×3×H×W`` points lifted from a depth map (``H, W ≥ 2``).

    Returns:
        ``B×3×H×W`` unit normals ``(∂X/∂row) × (∂X/∂col)``, zero where the point map is flat
        (both differences vanish).

    Convention:
        Along each image axis the central difference is used where the forward and backward
        differences are within a factor 2 in length; elsewhere the shorter one-sided difference
        is used, so normals next to a depth discontinuity are taken from the surface the pixel
        belongs to rather than across the jump. At the image border the only available side
        is used. With OpenCV cameras (x right, y down) the normal of a surface seen from
        the front points towards the camera the points were lifted from.
    """
    if points_world.shape[-1] < 2 or points_world.shape[-2] < 2:
        raise ValueError(f"point map must be at least 2×2 to take differences, got {tuple(points_world.shape)}")

    def difference(dim: int) -> Tensor:
        diff = points_world.diff(dim=dim)  # one shorter along dim
        forward = torch.cat((diff, diff.narrow(dim, -1, 1)), dim=dim)  # B×3×H×W, last repeats
        backward = torch.cat((diff.narrow(dim, 0, 1), diff), dim=dim)
        lengths = torch.stack((forward.norm(dim=1, keepdim=True), backward.norm(dim=1, keepdim=True)))  # 2×B×1×H×W
        shorter = torch.where(lengths[0] <= lengths[1], forward, backward)
        smooth = lengths.amax(dim=0) <= _SMOOTH_RATIO * lengths.amin(dim=0)
        return torch.where(smooth, (forward + backward) / 2, shorter)  # central where smooth

    d_row, d_col = difference(2), difference(3)  # B×3×H×W each
    return F.normalize(torch.linalg.cross(d_row, d_col, dim=1), dim=1)


def visibility_mask(
    depth_src: Tensor,
    c25_src: Tensor,
    depth_dst: Tensor,
    c25_dst: Tensor,
    rel_tol: float = 0.01,
    grazing_cos: float = 0.1,
) -> Tensor:
    """Which pixels of a novel view (dst) show surface that the input view (src) sees.

    Each dst pixel is lifted to ``X`` with ``depth_dst`` and projected into src. It is visible
    when (1) the projection is inside the src image and in front of the camera, (2) the
    distance from the src camera centre to ``X`` agrees with ``depth_src`` sampled bilinearly
    at the projection, ``|dist − d| ≤ rel_tol · d`` (a z-buffer test), and (3) the surface is
    not grazing for src: ``−n · r_src ≥ grazing_cos`` with ``n`` from :func:`point_normals`
    of the dst point map and ``r_src`` the unit ray from the src camera to ``X``.

    Args:
        depth_src: ``B×1×S×S`` depth of the input view (EG3D ``image_depth``), world units.
        c25_src: ``B×25`` or ``1×25`` input camera.
        depth_dst: ``B×1×R×R`` depth of the novel view; ``R`` may differ from ``S``.
        c25_dst: ``B×25`` or ``1×25`` novel camera.
        rel_tol: relative depth tolerance of the z-buffer test (0.01 = 1 %).
        grazing_cos: smallest cosine between the surface normal and the reversed src ray
            (0.1 ≈ 84°); surfaces facing away from src (negative cosine) always fail unless
            ``grazing_cos ≤ -1``, which disables the test.

    Returns:
        ``B×1×R×R`` float mask in ``{0, 1}`` (1 = visible from src), dtype of ``depth_dst``.

    Convention:
        Bilinear sampling of ``depth_src`` blends the two layers at its depth discontinuities,
        so points projecting within a pixel of a src silhouette fail the z-buffer test: the
        mask errs towards "occluded". ``depth_src`` is sampled with border padding; pixels in
        the half-pixel band at the image edge are inside.
    """
    resolution_src = _square_resolution(depth_src)
    points_world = unproject_depth(depth_dst, c25_dst)  # B×3×R×R
    projection = project_points(points_world, c25_src, resolution_src)
    sampled_depth = F.grid_sample(
        depth_src.to(depth_dst).expand(len(depth_dst), -1, -1, -1),
        projection.grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # B×1×R×R
    depth_agrees = (projection.distance - sampled_depth).abs() <= rel_tol * sampled_depth
    cam2world_src, _ = _cameras(c25_src, len(depth_dst), depth_dst)
    rays_src = F.normalize(points_world - cam2world_src[:, :3, 3, None, None], dim=1)  # B×3×R×R
    facing_cos = -(point_normals(points_world) * rays_src).sum(dim=1, keepdim=True)  # B×1×R×R
    visible = projection.inside & depth_agrees & (facing_cos >= grazing_cos)
    return visible.to(depth_dst.dtype)


def backward_warp(image_src: Tensor, depth_dst: Tensor, c25_dst: Tensor, c25_src: Tensor) -> tuple[Tensor, Tensor]:
    """Render the input image at a novel camera by sampling it where the novel pixels' points project.

    Args:
        image_src: ``B×C×H×H`` image of the src camera (any square size; ``1×C×H×H`` broadcasts).
        depth_dst: ``B×1×R×R`` depth of the dst view (the warped image has this size).
        c25_dst: ``B×25`` or ``1×25`` dst (novel) camera.
        c25_src: ``B×25`` or ``1×25`` src (input) camera.

    Returns:
        ``(warped, inside)``: ``B×C×R×R`` samples of ``image_src`` (bilinear ``grid_sample``,
        ``align_corners=False``, border padding), set to 0 where ``inside`` is 0; ``inside`` is
        the ``B×1×R×R`` float mask of points in front of src that project into its image.
        Occlusion is not handled here: combine with :func:`visibility_mask`.

    Convention:
        Differentiable with respect to ``image_src`` (and ``depth_dst`` away from the border).
    """
    if image_src.ndim != 4 or image_src.shape[-1] != image_src.shape[-2]:
        raise ValueError(f"expected a square image of shape B×C×H×H, got {tuple(image_src.shape)}")
    points_world = unproject_depth(depth_dst, c25_dst)  # B×3×R×R
    projection = project_points(points_world, c25_src, image_src.shape[-1])
    warped = F.grid_sample(
        image_src.expand(len(depth_dst), -1, -1, -1),
        projection.grid.to(image_src.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # B×C×R×R
    inside = projection.inside.to(image_src.dtype)
    return warped * inside, inside


def erode_mask(mask: Tensor, pixels: int = 1) -> Tensor:
    """Erode a mask with a ``(2·pixels + 1)²`` square structuring element (a min filter).

    Args:
        mask: ``B×1×H×W`` (or ``B×C×H×W``) mask; binary input gives a binary output, soft
            input is eroded grey-scale.
        pixels: erosion radius in pixels (Chebyshev distance); 0 returns ``mask``.

    Returns:
        Same shape and dtype: a pixel keeps its value only if every pixel within ``pixels``
        (in both axes) is set, so a filled rectangle loses exactly a ``pixels``-wide border.

    Convention:
        ``kornia.morphology.erosion`` with its default ``border_type="geodesic"``: pixels outside
        the image are ignored (the minimum runs over the part of the square inside the image), so
        a mask that touches the image border is not eroded from that side.
    """
    if pixels < 0:
        raise ValueError(f"erosion radius must be ≥ 0 pixels, got {pixels}")
    if pixels == 0:
        return mask
    size = 2 * pixels + 1
    return erosion(mask, torch.ones(size, size, dtype=mask.dtype, device=mask.device), border_type="geodesic")


def feather_mask(mask: Tensor, radius: int) -> Tensor:
    """Soften the inside edge of a binary mask: 0 outside, a Gaussian ramp inside, 1 in the interior.

    The mask is eroded by ``radius`` pixels and blurred with a Gaussian of standard deviation
    ``radius / 3`` truncated at ``radius`` (kernel ``2·radius + 1``), then cut to the original
    support: ``feather = mask · (1 − blur(1 − erode(mask, radius)))``.

    Args:
        mask: ``B×1×H×W`` mask, thresholded at 0.5 (not differentiable).
        radius: feathering radius in pixels; 0 returns the thresholded mask.

    Returns:
        ``B×1×H×W`` alpha in ``[0, 1]``, dtype of ``mask``.

    Convention:
        At a straight edge the alpha is 1/2 at ``radius`` pixels inside the mask's edge (the
        line between the last outside and the first inside pixel). It is
        exactly 0 outside the mask and exactly 1 at pixels farther than ``2·radius``
        (Chebyshev distance) from any pixel outside it; the feather never grows the mask.
        The image border is not an edge (geodesic erosion, replicate padding for the blur).
    """
    if radius < 0:
        raise ValueError(f"feathering radius must be ≥ 0 pixels, got {radius}")
    binary = (mask > 0.5).to(mask.dtype)
    if radius == 0:
        return binary
    size = 2 * radius + 1
    sigma = radius / 3
    # blurring the complement keeps the interior exactly 1 (a blur of zeros is exactly zero)
    outside = gaussian_blur2d(1 - erode_mask(binary, radius), (size, size), (sigma, sigma), border_type="replicate")
    return binary * (1 - outside).clamp(0, 1)


def _bilinear_taps(size_in: int, size_out: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices ``i0``, ``i1`` and weight of ``i1`` for one axis, as ``F.interpolate(bilinear)``."""
    scale = size_in / size_out
    real = ((torch.arange(size_out, device=like.device, dtype=like.dtype) + 0.5) * scale - 0.5).clamp(min=0)
    index0 = real.floor().long().clamp(max=size_in - 1)
    index1 = (index0 + 1).clamp(max=size_in - 1)
    return index0, index1, real - index0


def upsample_depth(
    depth: Tensor, size: int | tuple[int, int], image: Tensor | None = None, rel_tol: float = 0.01
) -> Tensor:
    """Upsample a depth map without blending foreground and background at depth discontinuities.

    Each output pixel looks at the 2×2 source pixels that bilinear interpolation would use.
    Where they are smooth (``max ≤ (1 + rel_tol) · min``) the output is exactly
    ``F.interpolate(depth, size, mode="bilinear", align_corners=False)``. Elsewhere it copies
    one of the four source depths, so no depth between two layers is ever created: the
    nearest one, or, if ``image`` is given, the one whose colour (``image`` area-downsampled to
    the depth resolution) is closest in L2 to the output pixel's colour, so that the
    discontinuity follows the image's edge (a joint, guided nearest-neighbour).

    Args:
        depth: ``B×1×h×w`` positive depth (e.g. rendered at the neural rendering resolution).
        size: output size, ``int`` for square or ``(H, W)``; meant for ``H ≥ h``, ``W ≥ w``.
        image: optional ``B×C×H×W`` guidance image at the output size.
        rel_tol: relative depth spread within a 2×2 neighbourhood still treated as smooth.

    Returns:
        ``B×1×H×W`` depth.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if image is not None and tuple(image.shape[-2:]) != (height, width):
        raise ValueError(f"guidance image must have the output size {(height, width)}, got {tuple(image.shape[-2:])}")
    row0, row1, weight_row = _bilinear_taps(depth.shape[-2], height, depth)
    col0, col1, weight_col = _bilinear_taps(depth.shape[-1], width, depth)

    def tap(source: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return source[:, :, rows][:, :, :, cols]  # B×C×H×W

    taps = torch.stack(
        (tap(depth, row0, col0), tap(depth, row0, col1), tap(depth, row1, col0), tap(depth, row1, col1))
    )  # 4×B×1×H×W
    w_row, w_col = weight_row[:, None], weight_col[None, :]  # H×1, 1×W
    weights = torch.stack(((1 - w_row) * (1 - w_col), (1 - w_row) * w_col, w_row * (1 - w_col), w_row * w_col))
    bilinear = (weights[:, None, None] * taps).sum(dim=0)  # B×1×H×W
    if image is None:
        choice = weights.argmax(dim=0).expand_as(bilinear)  # B×1×H×W, index of the nearest tap
    else:
        image_low = F.interpolate(image, size=depth.shape[-2:], mode="area")  # B×C×h×w
        colours = torch.stack(
            (
                tap(image_low, row0, col0),
                tap(image_low, row0, col1),
                tap(image_low, row1, col0),
                tap(image_low, row1, col1),
            )
        )  # 4×B×C×H×W
        choice = (colours - image).square().sum(dim=2, keepdim=True).argmin(dim=0)  # B×1×H×W
    nearest = taps.gather(0, choice[None]).squeeze(0)  # B×1×H×W
    smooth = taps.amax(dim=0) <= (1 + rel_tol) * taps.amin(dim=0)
    return torch.where(smooth, bilinear, nearest)


def alpha_blend(visible: Tensor, occluded: Tensor, mask: Tensor, radius: int = 10) -> Tensor:
    """Gaussian-feathered alpha blending: ``α · visible + (1 − α) · occluded``, ``α = feather_mask(mask, radius)``.

    Args:
        visible: ``B×C×H×W`` image used where ``mask`` is 1 (e.g. the warped input ``V_i``).
        occluded: ``B×C×H×W`` image used elsewhere (e.g. ``O_i``).
        mask: ``B×1×H×W`` visibility mask, thresholded at 0.5.
        radius: feathering radius in pixels (see :func:`feather_mask`).

    Returns:
        ``B×C×H×W``; equals ``occluded`` exactly outside the mask and ``visible`` exactly farther
        than ``2·radius`` pixels inside it, a convex combination in between.
    """
    alpha = feather_mask(mask, radius)  # B×1×H×W
    return alpha * visible + (1 - alpha) * occluded


def _neighbour_sum(x: Tensor) -> Tensor:
    """Sum of the 4-neighbours of every pixel, zero outside the image. ``x``: ``N×1×H×W``.

    Four shifted in-place adds: on the development machine's CPU 35× faster than a 3×3
    ``conv2d`` of one channel (1.6 vs 58 ms for 6×512², one thread)."""
    out = torch.zeros_like(x)
    out[..., 1:, :] += x[..., :-1, :]
    out[..., :-1, :] += x[..., 1:, :]
    out[..., :, 1:] += x[..., :, :-1]
    out[..., :, :-1] += x[..., :, 1:]
    return out


class _Stencil(NamedTuple):
    """A symmetric 5-point operator ``(A x)_p = diag_p x_p − Σ_q w_pq x_q`` on ``N×1×H×W`` grids.

    ``right``/``down`` hold the weight of the edge from a cell to its right/lower neighbour
    (zero in the last column/row); ``inverse_diag`` is ``1 / diag`` on cells with ``diag > 0``
    and zero elsewhere (cells outside the domain, whose unknowns stay zero); ``red`` is the
    ``H×W`` checkerboard of red-black Gauss-Seidel."""

    diag: Tensor
    right: Tensor
    down: Tensor
    inverse_diag: Tensor
    red: Tensor

    @classmethod
    def of(cls, diag: Tensor, right: Tensor, down: Tensor) -> _Stencil:
        inverse_diag = torch.where(diag > 0, 1 / diag.clamp_min(torch.finfo(diag.dtype).tiny), 0)
        height, width = diag.shape[-2:]
        rows = torch.arange(height, device=diag.device)[:, None]
        cols = torch.arange(width, device=diag.device)[None]
        return cls(diag, right, down, inverse_diag, (rows + cols) % 2 == 0)

    def neighbour_sum(self, x: Tensor) -> Tensor:
        """``Σ_q w_pq x_q`` over the 4-neighbours, by shifted adds."""
        out = self.right * torch.roll(x, -1, -1)  # the last column's weight is zero: no wrap-around
        out[..., :, 1:] += (self.right * x)[..., :, :-1]
        out += self.down * torch.roll(x, -1, -2)
        out[..., 1:, :] += (self.down * x)[..., :-1, :]
        return out

    def apply(self, x: Tensor) -> Tensor:
        return self.diag * x - self.neighbour_sum(x)


def _sum_blocks(x: Tensor) -> Tensor:
    """Sum of every 2×2 block (an odd last row/column is padded with zeros): ``N×1×⌈H/2⌉×⌈W/2⌉``."""
    x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]


def _coarsen(fine: _Stencil) -> _Stencil:
    """The Galerkin operator ``Pᵀ A P`` for ``P`` = constant over 2×2 blocks: again a 5-point stencil.

    A block's diagonal is the sum of its cells' diagonals less twice its internal edges; the edge
    between two neighbouring blocks is the sum of the fine edges that cross from one to the other."""
    diag, right, down = (F.pad(t, (0, t.shape[-1] % 2, 0, t.shape[-2] % 2)) for t in fine[:3])
    internal = right[..., 0::2, 0::2] + right[..., 1::2, 0::2] + down[..., 0::2, 0::2] + down[..., 0::2, 1::2]
    return _Stencil.of(
        _sum_blocks(diag) - 2 * internal,
        right[..., 0::2, 1::2] + right[..., 1::2, 1::2],
        down[..., 1::2, 0::2] + down[..., 1::2, 1::2],
    )


def _gauss_seidel(stencil: _Stencil, x: Tensor, rhs: Tensor, red_first: bool) -> Tensor:
    """One red-black Gauss-Seidel sweep of ``A x = rhs`` (black-red if not ``red_first``)."""
    red = stencil.red
    for colour in (red, ~red) if red_first else (~red, red):
        x = torch.where(colour, (rhs + stencil.neighbour_sum(x)) * stencil.inverse_diag, x)
    return x


MULTIGRID_SWEEPS = 2
"""Red-black Gauss-Seidel sweeps before and after each coarse-grid correction."""
MULTIGRID_CORRECTION_SCALE = 1.8
"""Over-correction of the piecewise-constant prolongation, which underestimates smooth errors
(measured on 512² visibility-like masks: 8 CG iterations to 1e-5 at 1.8, 16 at 1.0 or 1.5)."""
MULTIGRID_COARSEST = 8
"""Side (cells) below which the hierarchy stops; that level is only smoothed (8 symmetric sweeps)."""


def _multigrid_levels(finest: _Stencil) -> list[_Stencil]:
    levels = [finest]
    while min(levels[-1].diag.shape[-2:]) > MULTIGRID_COARSEST:
        levels.append(_coarsen(levels[-1]))
    return levels


def _v_cycle(levels: list[_Stencil], rhs: Tensor) -> Tensor:
    """One symmetric V-cycle from zero: an SPD approximation of ``A⁻¹ rhs`` (so a CG preconditioner).

    Symmetric because the sweeps after the correction run in the reverse colour order of those
    before it, and restriction is the transpose of prolongation (block sum / block copy)."""
    stencil, coarser = levels[0], levels[1:]
    x = torch.zeros_like(rhs)
    if not coarser:
        for _ in range(MULTIGRID_COARSEST):
            x = _gauss_seidel(stencil, _gauss_seidel(stencil, x, rhs, red_first=True), rhs, red_first=False)
        return x
    for _ in range(MULTIGRID_SWEEPS):
        x = _gauss_seidel(stencil, x, rhs, red_first=True)
    correction = _v_cycle(coarser, _sum_blocks(rhs - stencil.apply(x)))
    height, width = rhs.shape[-2:]
    correction = correction.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :height, :width]
    x = x + MULTIGRID_CORRECTION_SCALE * (stencil.diag > 0) * correction
    for _ in range(MULTIGRID_SWEEPS):
        x = _gauss_seidel(stencil, x, rhs, red_first=False)
    return x


POISSON_CHECK_EVERY = 8
"""Conjugate-gradient iterations between two convergence tests of :func:`poisson_blend`."""


def poisson_blend(
    visible: Tensor,
    occluded: Tensor,
    mask: Tensor,
    iterations: int = 2000,
    tol: float = 1e-5,
    images_per_solve: int | None = None,
) -> Tensor:
    """Seamless cloning (Pérez et al. 2003) of ``visible`` into ``occluded`` inside ``mask``.

    Solves, for every pixel ``p`` of ``Ω = {mask > 0.5}``,
    ``|N_p| f_p − Σ_{q∈N_p∩Ω} f_q = Σ_{q∈N_p} (v_p − v_q) + Σ_{q∈N_p∖Ω} o_q``,
    i.e. ``Δf = Δv`` in ``Ω`` with ``f = o`` on the pixels outside ``Ω`` (Dirichlet), where
    ``N_p`` are the 4-neighbours of ``p`` inside the image, ``v = visible`` and ``o = occluded``.
    The system is solved by conjugate gradients (5-point stencil by shifted adds), batched over
    ``B`` and ``C``, starting from ``f = v``, preconditioned by one V-cycle of geometric
    multigrid on the masked operator itself: 2×2 aggregation with Galerkin coarse operators
    (again 5-point stencils, so every level sees ``Ω``'s boundary), red-black Gauss-Seidel
    smoothing. Written here because no library fits: pyamg's multigrid runs on the CPU only,
    one sparse system at a time, while the pseudo views are built on the generator's device.
    Iteration counts and times: ``benchmarks/README.md``.

    Args:
        visible: ``B×C×H×W`` source (guidance field).
        occluded: ``B×C×H×W`` target, kept outside the mask.
        mask: ``B×1×H×W``, thresholded at 0.5 (not differentiable).
        iterations: maximum number of CG iterations.
        tol: stop once every system's residual norm is at most ``tol`` times its initial one.
        images_per_solve: images solved together (the results do not depend on it); ``None``:
            all of them on a GPU, one at a time on a CPU, where buffers of many 512² images
            spend most of the time in page faults (16 views at 512² on the development machine's
            2-core CPU: 4.3 s one at a time, 4.0 s four at a time, 14.6 s all together).

    Returns:
        ``B×C×H×W`` blend; exactly ``occluded`` outside the mask. Computed in at least float32.

    Convention:
        The image border is not a boundary: a pixel of ``Ω`` on it simply has fewer
        neighbours (zero normal derivative there). A component of ``Ω`` that touches no pixel
        outside ``Ω`` has no Dirichlet data and keeps ``visible``: on the connected pixel grid that
        is only an all-ones mask.
    """
    if images_per_solve is None:
        images_per_solve = len(visible) if visible.device.type == "cuda" else 1
    mask = mask.expand(len(visible), -1, -1, -1)
    chunks = (tensor.split(images_per_solve) for tensor in (visible, occluded, mask))
    parts = zip(*chunks, strict=True)
    return torch.cat([_poisson_solve(v, o, m, iterations, tol) for v, o, m in parts])


def _poisson_solve(visible: Tensor, occluded: Tensor, mask: Tensor, iterations: int, tol: float) -> Tensor:
    """:func:`poisson_blend` of all the images at once."""
    out_dtype = torch.promote_types(visible.dtype, occluded.dtype)
    dtype = torch.promote_types(out_dtype, torch.float32)
    visible, occluded = visible.to(dtype), occluded.to(dtype)  # B×C×H×W: B·C systems
    inside = (mask > 0.5).to(dtype)  # B×1×H×W, shared by the channels
    degree = _neighbour_sum(torch.ones_like(inside[:1]))  # 1×1×H×W, neighbours inside the image
    right = torch.zeros_like(inside)
    right[..., :, :-1] = inside[..., :, :-1] * inside[..., :, 1:]
    down = torch.zeros_like(inside)
    down[..., :-1, :] = inside[..., :-1, :] * inside[..., 1:, :]
    operator = _Stencil.of(inside * degree, right, down)  # the SPD system restricted to Ω
    levels = _multigrid_levels(operator)
    systems = visible.shape[0] * visible.shape[1]

    def dot(a: Tensor, b: Tensor) -> Tensor:  # B×C×1×1, without a B×C×H×W temporary
        shape = (*a.shape[:2], 1, 1)
        return torch.bmm(a.reshape(systems, 1, -1), b.reshape(systems, -1, 1)).reshape(shape)

    tiny = torch.finfo(dtype).tiny
    rhs = inside * (degree * visible - _neighbour_sum(visible) + _neighbour_sum((1 - inside) * occluded))
    x = inside * visible
    # Without a pixel outside Ω (the only Ω with a component that touches no Dirichlet data: the
    # image is connected) the system is singular and f = v solves it; its rounding-level residual
    # would otherwise send CG along the null space, which the multigrid hierarchy amplifies.
    has_boundary = (inside < 1).flatten(1).any(1)[:, None, None, None]  # B×1×1×1
    residual = (rhs - operator.apply(x)) * has_boundary
    threshold_sq = tol**2 * dot(residual, residual)
    preconditioned = _v_cycle(levels, residual)
    direction = preconditioned
    rho = dot(residual, preconditioned)
    for iteration in range(iterations):
        # The convergence test synchronises a GPU: every CHECK_EVERY iterations is enough.
        if iteration % POISSON_CHECK_EVERY == 0 and bool((dot(residual, residual) <= threshold_sq).all()):
            break
        operator_direction = operator.apply(direction)
        curvature = dot(direction, operator_direction)
        step = torch.where(curvature > 0, rho / curvature.clamp_min(tiny), 0)
        x.addcmul_(step.expand_as(direction), direction)  # in place: no new H×W buffers per iteration
        residual.addcmul_(step.expand_as(operator_direction), operator_direction, value=-1)
        preconditioned = _v_cycle(levels, residual)
        new_rho = dot(residual, preconditioned)
        beta = torch.where(rho > 0, new_rho / rho.clamp_min(tiny), 0)
        direction = direction.mul_(beta).add_(preconditioned)  # the first direction is a fresh tensor too
        rho = new_rho
    return (x + (1 - inside) * occluded).to(out_dtype)


def difference_mask(x: Tensor, y: Tensor, threshold: float) -> Tensor:
    """In-distribution mask of the occluded texture (docs/method.md §5): 1 where ``‖x − y‖₂ ≤ threshold`` over channels.

    Args:
        x: ``B×C×H×W`` image (e.g. the input photo, EG3D range ``[-1, 1]``).
        y: ``B×C×H×W`` image in the same units (e.g. ``G(w_e, p0)``).
        threshold: ``θ``, in the images' units.

    Returns:
        ``B×1×H×W`` float mask in ``{0, 1}``, dtype of ``x``.
    """
    distance = torch.linalg.vector_norm(x - y, dim=1, keepdim=True)  # B×1×H×W
    return (distance <= threshold).to(x.dtype)
