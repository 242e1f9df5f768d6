"""Model-free multi-view consistency: novel views warped back into the input view with rendered depth.

hfgi3d's own metric (beyond the paper's IBRNet protocol; it needs no downloaded network): each
novel view is resampled at the input camera through the input view's rendered depth and compared
with the input photo over the pixels that the novel view actually sees. A 3D-consistent
inversion that keeps the photo's details scores high; textures that drift, swim or vanish when
the camera moves score low. Unlike IBRNet's prediction, the warp adds no learned prior of its own.

Convention:
    Images are ``B×3×H×W`` in ``[-1, 1]``; depths are EG3D ``image_depth`` maps (distance along
    the unit ray, world units) at the neural rendering resolution; cameras are ``c25`` labels
    (see :mod:`hfgi3d.geometry`). The input depth is upsampled to the image size with
    :func:`hfgi3d.geometry.upsample_depth` (no depth is invented between two layers).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hfgi3d.geometry import backward_warp, upsample_depth, visibility_mask
from hfgi3d.losses import LPIPS
from hfgi3d.metrics.fidelity import masked_psnr


class WarpConsistency(NamedTuple):
    """Per novel view (``N``) scores of :func:`warp_consistency`."""

    psnr: Tensor
    """``N`` masked PSNR (dB) of the warped novel view against the input photo; NaN if nothing is visible."""
    lpips: Tensor | None
    """``N`` masked LPIPS (NaN if nothing is visible), or ``None`` without an LPIPS module."""
    coverage: Tensor
    """``N`` fraction of input pixels that the novel view sees (the mask's mean)."""
    warped: Tensor
    """``N×3×H×W`` novel views resampled at the input camera (0 outside the mask)."""
    mask: Tensor
    """``N×1×H×W`` float mask in ``{0, 1}``: input pixels seen by the novel view."""


def warp_consistency(
    input_image: Tensor,
    input_depth: Tensor,
    input_c25: Tensor,
    novel_images: Tensor,
    novel_depths: Tensor,
    novel_c25: Tensor,
    lpips: LPIPS | None = None,
    rel_tol: float = 0.01,
    grazing_cos: float = 0.1,
) -> WarpConsistency:
    """Warp novel views into the input view and score them against the input photo where visible.

    Args:
        input_image: ``1×3×H×H`` input photo in ``[-1, 1]``.
        input_depth: ``1×1×S×S`` depth rendered at the input camera (any ``S``).
        input_c25: ``1×25`` input camera.
        novel_images: ``N×3×H×H`` renders at the novel cameras.
        novel_depths: ``N×1×S'×S'`` depths rendered at the novel cameras.
        novel_c25: ``N×25`` novel cameras.
        lpips: an LPIPS module for the masked LPIPS; ``None`` skips it.
        rel_tol, grazing_cos: the z-buffer tolerance and the grazing-angle limit of
            :func:`hfgi3d.geometry.visibility_mask`.

    Returns:
        :class:`WarpConsistency`. A pixel counts where the novel view sees the input view's surface
        point (z-buffer test against ``novel_depths``, not grazing) and the point projects inside
        the novel image.
    """
    if input_image.shape[0] != 1 or input_depth.shape[0] != 1:
        raise ValueError(
            f"expected one input view, got images {tuple(input_image.shape)}, depth {tuple(input_depth.shape)}"
        )
    if not (len(novel_images) == len(novel_depths) == len(novel_c25)):
        raise ValueError(
            f"novel views disagree in number: {len(novel_images)} images, {len(novel_depths)} depths, "
            f"{len(novel_c25)} cameras"
        )
    num_views, resolution = len(novel_images), input_image.shape[-1]
    depth_input = upsample_depth(input_depth, resolution).expand(num_views, -1, -1, -1)  # N×1×H×H
    seen = visibility_mask(novel_depths, novel_c25, depth_input, input_c25, rel_tol=rel_tol, grazing_cos=grazing_cos)
    warped, inside = backward_warp(novel_images, depth_input, input_c25, novel_c25)  # N×3×H×H, N×1×H×H
    mask = seen * inside
    target = input_image.expand(num_views, -1, -1, -1)
    coverage = mask.mean(dim=(1, 2, 3))  # N
    distance = None
    if lpips is not None:
        with torch.no_grad():
            distance = lpips(warped, target, mask)
        distance = torch.where(coverage > 0, distance, torch.full_like(distance, float("nan")))
    return WarpConsistency(
        psnr=masked_psnr(warped, target, mask),
        lpips=distance,
        coverage=coverage,
        warped=warped,
        mask=mask,
    )
