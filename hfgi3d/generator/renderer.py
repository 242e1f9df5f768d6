"""Tri-plane sampling, the OSG decoder and EG3D's two-pass importance volume renderer.

Convention:
    Points and rays are in world units (see :mod:`hfgi3d.cameras`). The tri-plane box is
    ``[-box_warp/2, box_warp/2]³``; outside it features are zero. Depths are distances
    along unit ray directions. Ray-sample tensors are ``N×M×S×C`` (batch, rays, samples
    per ray, channels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hfgi3d.generator.layers import FullyConnectedLayer

if TYPE_CHECKING:
    from hfgi3d.generator.config import RenderingConfig

PLANE_AXES = ((0, 1), (0, 2), (2, 0))
"""World axes spanning the three planes: XY, XZ and ZX.

The third plane would be YZ in a textbook tri-plane. EG3D's ``generate_planes`` makes it
ZX by mistake, and every released model was trained so; keeping it is what makes the
weights work.
"""
DECODER_HIDDEN = 64
RGB_PADDING = 0.001  # sigmoid output is stretched to [-0.001, 1.001] (MipNeRF)
DENSITY_BIAS = 1.0  # softplus(sigma - 1): EG3D's initialisation-friendly activation bias
PDF_EPS = 1e-5
WEIGHT_SMOOTHING = 0.01  # added to the smoothed coarse weights before importance sampling
TRANSMITTANCE_EPS = 1e-10


def project_onto_planes(coords_world: Tensor, box_warp: float) -> Tensor:
    """Plane coordinates in ``[-1, 1]`` (grid_sample convention) of ``N×M×3`` points → ``N×3×M×2``."""
    coords = (2 / box_warp) * coords_world
    return torch.stack([coords[..., list(axes)] for axes in PLANE_AXES], dim=1)


def sample_from_planes(planes: Tensor, coords_world: Tensor, box_warp: float) -> Tensor:
    """Bilinearly sample ``N×3×C×H×W`` planes at ``N×M×3`` points → ``N×3×M×C`` (zeros outside)."""
    n, n_planes, channels, h, w = planes.shape
    grid = project_onto_planes(coords_world, box_warp).reshape(n * n_planes, 1, -1, 2)  # (3N)×1×M×2
    features = F.grid_sample(
        planes.reshape(n * n_planes, channels, h, w), grid.to(planes.dtype),
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )  # fmt: skip  # (3N)×C×1×M
    return features.permute(0, 3, 2, 1).reshape(n, n_planes, -1, channels)


class OSGDecoder(nn.Module):
    """Tiny MLP from the mean of the three plane features to density and colour features.

    Output ``sigma`` is the raw density logit (``N×M×1``); ``rgb`` holds
    ``out_features`` channels in ``[-0.001, 1.001]`` whose first three are colour.
    """

    def __init__(self, n_features: int = 32, out_features: int = 32, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, DECODER_HIDDEN, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(DECODER_HIDDEN, 1 + out_features, lr_multiplier=lr_multiplier),
        )

    def forward(self, sampled_features: Tensor) -> dict[str, Tensor]:
        x = sampled_features.mean(1)  # N×M×C
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * RGB_PADDING) - RGB_PADDING
        return {"rgb": rgb, "sigma": x[..., 0:1]}


def ray_march(
    colors: Tensor, densities: Tensor, depths: Tensor, white_back: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite samples at interval midpoints (EG3D's ``MipRayMarcher2``).

    Args:
        colors: ``N×M×S×C`` in ``[0, 1]``.
        densities: ``N×M×S×1`` raw logits; density is ``softplus(sigma - 1)``.
        depths: ``N×M×S×1``, sorted along S.
        white_back: composite over white instead of black.

    Returns:
        ``(rgb N×M×C in [-1, 1], depth N×M×1, weights N×M×(S-1)×1)``. The depth is the
        weighted mean midpoint depth, clamped to the range of all sample depths of the
        batch (empty rays get the far end).
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-F.softplus(densities_mid - DENSITY_BIAS) * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + TRANSMITTANCE_EPS], -2)
    weights = alpha * torch.cumprod(alpha_shifted, -2)[:, :, :-1]
    composite_rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
    composite_depth = torch.nan_to_num(composite_depth, float("inf"))
    composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
    if white_back:
        composite_rgb = composite_rgb + 1 - weight_total
    return composite_rgb * 2 - 1, composite_depth, weights


def sample_stratified(
    n: int, m: int, ray_start: float, ray_end: float, num_samples: int, deterministic: bool,
    disparity_space: bool = False, device: torch.device | None = None,
) -> Tensor:  # fmt: skip
    """Coarse depths ``N×M×S×1``: one per bin, at the bin start when ``deterministic``, else jittered."""
    base = torch.linspace(0, 1, num_samples, device=device) if disparity_space else None
    if base is None:
        depths = torch.linspace(ray_start, ray_end, num_samples, device=device).reshape(1, 1, -1, 1).repeat(n, m, 1, 1)
        delta = (ray_end - ray_start) / (num_samples - 1)
    else:
        depths = base.reshape(1, 1, -1, 1).repeat(n, m, 1, 1)
        delta = 1 / (num_samples - 1)
    if not deterministic:
        depths = depths + torch.rand_like(depths) * delta
    if disparity_space:
        depths = 1.0 / (1.0 / ray_start * (1.0 - depths) + 1.0 / ray_end * depths)
    return depths


@torch.no_grad()
def sample_importance(depths: Tensor, weights: Tensor, num_samples: int, deterministic: bool) -> Tensor:
    """Fine depths ``N×M×S'×1`` drawn from the coarse weights (NeRF hierarchical sampling).

    The coarse weights are smoothed by a 2-tap max then a 2-tap mean filter and lifted by
    0.01 so that empty rays still spread their samples.
    """
    n, m, s, _ = depths.shape
    z_vals = depths.reshape(n * m, s)
    w = weights.reshape(n * m, 1, -1).to(depths.dtype)
    w = F.max_pool1d(w, 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1).squeeze(1) + WEIGHT_SMOOTHING
    z_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
    return sample_pdf(z_mid, w[:, 1:-1], num_samples, deterministic).reshape(n, m, num_samples, 1)


def sample_pdf(bins: Tensor, weights: Tensor, num_samples: int, deterministic: bool) -> Tensor:
    """Inverse-CDF sampling of a piecewise-constant pdf.

    Args:
        bins: ``R×B`` bin edges (only the first ``W + 1`` are used).
        weights: ``R×W`` unnormalized bin weights.
        num_samples: samples per row.
        deterministic: evenly spaced ``u = linspace(0, 1)`` instead of uniform noise.

    Returns:
        ``R×num_samples`` sample positions.
    """
    rows, num_bins = weights.shape
    weights = weights + PDF_EPS
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # R×(W+1), from 0 to 1
    if deterministic:
        u = torch.linspace(0, 1, num_samples, device=bins.device).expand(rows, num_samples)
    else:
        u = torch.rand(rows, num_samples, device=bins.device)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, num_bins)
    inds_sampled = torch.stack([below, above], -1).view(rows, 2 * num_samples)
    cdf_g = torch.gather(cdf, 1, inds_sampled).view(rows, num_samples, 2)
    bins_g = torch.gather(bins, 1, inds_sampled).view(rows, num_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    # A zero-width cdf step is a bin of zero weight, which is never sampled: any value works.
    denom = torch.where(denom < PDF_EPS, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def query_planes(planes: Tensor, decoder: OSGDecoder, coords_world: Tensor, box_warp: float) -> dict[str, Tensor]:
    """Decoder outputs (``sigma`` N×M×1, ``rgb`` N×M×C) at ``N×M×3`` world points."""
    return decoder(sample_from_planes(planes, coords_world, box_warp))


def _sort_samples(depths: Tensor, colors: Tensor, densities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _, indices = torch.sort(depths, dim=-2)
    return (
        torch.gather(depths, -2, indices),
        torch.gather(colors, -2, indices.expand(-1, -1, -1, colors.shape[-1])),
        torch.gather(densities, -2, indices),
    )


def render_rays(
    planes: Tensor,
    decoder: OSGDecoder,
    origins_world: Tensor,
    directions_world: Tensor,
    options: RenderingConfig,
    deterministic: bool = False,
) -> dict[str, Tensor]:
    """Two-pass (coarse + importance) volume rendering of ``N×M`` rays through the tri-planes.

    Returns:
        ``features`` N×M×C (values ``2·composite − 1``), ``depth`` N×M×1,
        ``weights_sum`` N×M×1 (opacity) and ``depths_fine`` N×M×S'×1.
    """
    if options.clamp_mode != "softplus":
        raise ValueError(f"only clamp_mode='softplus' is supported, got {options.clamp_mode!r}")
    n, m, _ = origins_world.shape
    depths_coarse = sample_stratified(
        n, m, options.ray_start, options.ray_end, options.depth_resolution, deterministic,
        options.disparity_space_sampling, origins_world.device,
    )  # fmt: skip
    coarse = _query_along_rays(planes, decoder, origins_world, directions_world, depths_coarse, options.box_warp)
    colors, densities, depths = coarse["rgb"], coarse["sigma"], depths_coarse
    depths_fine = depths_coarse[:, :, :0]
    if options.depth_resolution_importance > 0:
        _, _, weights = ray_march(colors, densities, depths, options.white_back)
        depths_fine = sample_importance(depths_coarse, weights, options.depth_resolution_importance, deterministic)
        fine = _query_along_rays(planes, decoder, origins_world, directions_world, depths_fine, options.box_warp)
        depths, colors, densities = _sort_samples(
            torch.cat([depths_coarse, depths_fine], dim=-2),
            torch.cat([colors, fine["rgb"]], dim=-2),
            torch.cat([densities, fine["sigma"]], dim=-2),
        )
    features, depth, weights = ray_march(colors, densities, depths, options.white_back)
    return {"features": features, "depth": depth, "weights_sum": weights.sum(2), "depths_fine": depths_fine}


def _query_along_rays(
    planes: Tensor, decoder: OSGDecoder, origins: Tensor, directions: Tensor, depths: Tensor, box_warp: float
) -> dict[str, Tensor]:
    n, m, s, _ = depths.shape
    coords = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, -1, 3)  # N×(M·S)×3
    out = query_planes(planes, decoder, coords, box_warp)
    return {"rgb": out["rgb"].reshape(n, m, s, -1), "sigma": out["sigma"].reshape(n, m, s, 1)}
