"""EG3D's super-resolution modules: the neural rendering (feature image) → final image.

All of them condition on the last w only and run two synthesis blocks; they differ in the
input resolution, the output resolution and the channel widths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from hfgi3d.generator.layers import SynthesisBlock, fir_filter

_W_DIM = 512  # EG3D hard-codes w_dim=512 in every super-resolution module


class _Superresolution(nn.Module):
    input_resolution: int
    # 4X only interpolates inputs smaller than its input resolution (EG3D behaviour).
    upscale_only: bool = False

    def __init__(
        self,
        channels: int,
        block0: tuple[int, int, bool],
        block1_channels: int,
        conv_clamp: float | None,
        sr_antialias: bool,
        has_filter_buffer: bool,
    ) -> None:
        super().__init__()
        width0, resolution0, upsample0 = block0
        self.sr_antialias = sr_antialias
        self.block0 = SynthesisBlock(
            channels, width0, _W_DIM, resolution0, 3, conv_clamp=conv_clamp, upsample=upsample0
        )
        self.block1 = SynthesisBlock(width0, block1_channels, _W_DIM, resolution0 * 2, 3, conv_clamp=conv_clamp)
        if has_filter_buffer:  # unused, but part of the released state dicts
            self.register_buffer("resample_filter", fir_filter())

    def forward(self, rgb: Tensor, x: Tensor, ws: Tensor, noise_mode: str = "none") -> Tensor:
        """Map ``rgb`` (N×3×r×r) and features ``x`` (N×C×r×r) to the final N×3×R×R image."""
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = self.input_resolution
        needs_resize = x.shape[-1] < size if self.upscale_only else x.shape[-1] != size
        if needs_resize:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(
                rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=self.sr_antialias
            )
        x, rgb = self.block0(x, rgb, ws, noise_mode=noise_mode)
        _, rgb = self.block1(x, rgb, ws, noise_mode=noise_mode)
        return rgb


class SuperresolutionHybrid8XDC(_Superresolution):
    """128² → 512², 256 then 128 channels (the FFHQ/AFHQ 512 releases)."""

    input_resolution = 128

    def __init__(self, channels: int, conv_clamp: float | None, sr_antialias: bool) -> None:
        super().__init__(channels, (256, 256, True), 128, conv_clamp, sr_antialias, has_filter_buffer=False)


class SuperresolutionHybrid8X(_Superresolution):
    """128² → 512², 128 then 64 channels."""

    input_resolution = 128

    def __init__(self, channels: int, conv_clamp: float | None, sr_antialias: bool) -> None:
        super().__init__(channels, (128, 256, True), 64, conv_clamp, sr_antialias, has_filter_buffer=True)


class SuperresolutionHybrid4X(_Superresolution):
    """128² → 256²; the first block keeps the resolution."""

    input_resolution = 128
    upscale_only = True

    def __init__(self, channels: int, conv_clamp: float | None, sr_antialias: bool) -> None:
        super().__init__(channels, (128, 128, False), 64, conv_clamp, sr_antialias, has_filter_buffer=True)


class SuperresolutionHybrid2X(_Superresolution):
    """64² → 128²; the first block keeps the resolution."""

    input_resolution = 64

    def __init__(self, channels: int, conv_clamp: float | None, sr_antialias: bool) -> None:
        super().__init__(channels, (128, 64, False), 64, conv_clamp, sr_antialias, has_filter_buffer=True)


SUPERRESOLUTION_MODULES: dict[str, Callable[[int, float | None, bool], _Superresolution]] = {
    cls.__name__: cls
    for cls in (SuperresolutionHybrid8XDC, SuperresolutionHybrid8X, SuperresolutionHybrid4X, SuperresolutionHybrid2X)
}
