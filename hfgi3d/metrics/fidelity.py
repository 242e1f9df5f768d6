"""Image fidelity between a render and its target: PSNR, SSIM, MS-SSIM (torchmetrics), masked PSNR.

LPIPS lives in :class:`hfgi3d.losses.LPIPS` (``net="vgg"`` or ``"alex"``); it is both a loss and
a metric.

Convention:
    Images are ``B×3×H×W`` floats in ``[-1, 1]`` (EG3D's range), so the data range is 2 and
    ``PSNR = 10 · log10(2² / MSE)``; values are the same as for the images mapped to
    ``[0, 1]`` with a data range of 1. SSIM's luminance term is not shift-invariant, so (MS-)SSIM
    is computed on the images mapped to ``[0, 1]``, as for 8-bit photos everywhere else.
    Every metric returns one value per sample (``B``); callers average. SSIM is the usual
    Gaussian-window SSIM (σ = 1.5, 11×11 window, ``K1 = 0.01``, ``K2 = 0.03``) averaged over the
    valid region and the three channels, as scikit-image's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``. MS-SSIM is
    torchmetrics' (five scales, the weights of Wang et al. 2003; its per-scale means include the
    reflection-padded border) and needs images larger than ``(11 − 1) · 2⁴ = 160`` pixels a side.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from hfgi3d.losses import check_image_pair, masked_mse

DATA_RANGE = 2.0
"""Value range of ``[-1, 1]`` images."""
UNIT_RANGE = 1.0
"""Value range of the ``[0, 1]`` images (MS-)SSIM is computed on."""
SSIM_SIGMA = 1.5
SSIM_KERNEL_PX = 11
MS_SSIM_SCALES = 5
MS_SSIM_MIN_SIZE_PX = (SSIM_KERNEL_PX - 1) * 2 ** (MS_SSIM_SCALES - 1) + 1  # 161


def _unit(x: Tensor) -> Tensor:
    """``[-1, 1]`` → ``[0, 1]`` in float32."""
    return (x.float() + 1) / 2


def finite_mean(values: Tensor) -> float | None:
    """Mean of the finite entries (NaN marks "nothing to score"), ``None`` if there are none."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per sample (``B``), computed in float32; ``inf`` for identical images.

    torchmetrics' PSNR over each image's ``C×H×W`` values; a scalar ``data_range`` (not a
    ``(min, max)`` pair, which would clamp the images first).
    """
    check_image_pair(x, y)
    return peak_signal_noise_ratio(x.float(), y.float(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))


def masked_psnr(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """PSNR in dB per sample over the pixels a ``B×1×H×W`` mask selects (NaN where the mask is empty)."""
    check_image_pair(x, y)
    values = []
    for x_i, y_i, mask_i in zip(x.float(), y.float(), mask.float().expand(len(x), -1, -1, -1), strict=True):
        if float(mask_i.sum()) <= 0:
            values.append(x.new_tensor(math.nan, dtype=torch.float32))
            continue
        mse = masked_mse(x_i[None], y_i[None], mask_i[None])
        values.append(10 * torch.log10(DATA_RANGE**2 / mse))
    return torch.stack(values)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity per sample (``B``), in ``[-1, 1]`` (1 for identical images).

    The SSIM map is averaged over the valid region only (pixels at least one window radius from
    the border), as scikit-image and Wang et al.'s reference do; torchmetrics' own mean would
    include border pixels computed on reflection-padded images.
    """
    check_image_pair(x, y)
    radius = SSIM_KERNEL_PX // 2
    if min(x.shape[-2:]) <= 2 * radius:
        raise ValueError(f"SSIM needs images larger than {2 * radius}×{2 * radius} px, got {x.shape[-2]}×{x.shape[-1]}")
    _, ssim_map = structural_similarity_index_measure(
        _unit(x),
        _unit(y),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_PX,
        data_range=UNIT_RANGE,
        reduction="none",
        return_full_image=True,
    )  # B×3×H×W
    return ssim_map[..., radius:-radius, radius:-radius].mean(dim=(1, 2, 3))


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Multi-scale SSIM per sample (``B``); images must exceed 160 px on each side."""
    check_image_pair(x, y)
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIZE_PX:
        raise ValueError(
            f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE_PX}×{MS_SSIM_MIN_SIZE_PX} px "
            f"({MS_SSIM_SCALES} scales of an {SSIM_KERNEL_PX}-px window), got {x.shape[-2]}×{x.shape[-1]}"
        )
    return multiscale_structural_similarity_index_measure(
        _unit(x),
        _unit(y),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_PX,
        data_range=UNIT_RANGE,
        reduction="none",
    )
