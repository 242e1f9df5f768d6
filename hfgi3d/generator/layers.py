"""StyleGAN2 building blocks of EG3D's tri-plane backbone and super-resolution, in plain PyTorch.

Module and parameter names equal EG3D's so that its state dicts load by key. Weights use
equalized learning rate: parameters are stored at unit scale and multiplied by
``lr_multiplier / sqrt(fan_in)`` at run time. There is no custom CUDA code; the FIR
resampling and bias/activation ops below are the reference formulations, so everything
works with autograd, autocast and ``torch.compile``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through a leaky ReLU
DEMODULATION_EPS = 1e-8
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Scale ``x`` to unit root-mean-square along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def fir_filter(taps: tuple[float, ...] = FIR_TAPS) -> Tensor:
    """Separable 2-D FIR kernel ``outer(taps, taps)`` normalized to unit sum."""
    t = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(t, t)
    return f / f.sum()


def bias_act(
    x: Tensor, b: Tensor | None, activation: str = "linear", gain: float = 1.0, clamp: float | None = None
) -> Tensor:
    """Add a per-channel bias (dim 1), apply the activation, scale by ``gain``, clamp to ±``clamp``."""
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif activation != "linear":
        raise ValueError(f"unsupported activation {activation!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(
    x: Tensor, f: Tensor, up: int = 1, padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0
) -> Tensor:
    """Upsample by zero insertion, pad (``x0, x1, y0, y1``; negative crops), filter with ``f``.

    ``f`` is a 2-D kernel; it is flipped so that the operation is a true convolution, and
    multiplied by ``gain`` (which compensates the energy lost to the inserted zeros).
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    kernel = (f * gain).to(x.dtype).flip([0, 1])
    kernel = kernel[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """Upsample ``N×C×H×W`` by ``up`` with the FIR kernel ``f`` (output ``up·H × up·W``)."""
    fw = f.shape[-1]
    pad0, pad1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(pad0, pad1, pad0, pad1), gain=up * up)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    noise: Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: Tensor | None = None,
    demodulate: bool = True,
    fused: bool = True,
) -> Tensor:
    """StyleGAN2 modulated convolution.

    Args:
        x: ``N×I×H×W`` input.
        weight: ``O×I×k×k`` unit-scale kernel.
        styles: ``N×I`` per-sample input-channel scales, or ``1×I`` shared by the whole batch
            (one latent seen from several cameras): the kernel is then modulated once.
        noise: broadcastable to ``N×O×H'×W'``, added after (de)modulation.
        up: 1, or 2 for a transposed convolution followed by FIR low-pass filtering.
        padding: spatial padding of the plain convolution.
        resample_filter: FIR kernel used when ``up == 2``.
        demodulate: normalize each output channel's kernel to unit norm (eps 1e-8).
        fused: the styles scale the kernel (EG3D's inference path: one grouped convolution with
            per-sample kernels, or one plain convolution when the styles are shared); otherwise
            they scale the input, which is convolved with the shared kernel and rescaled. Both
            give the same result. Unfused, the backward pass needs no kernel gradient (cheaper
            while the weights are frozen); fused, it touches no activation-sized products
            (cheaper when the kernel gradient is needed anyway).

    Returns:
        ``N×O×H'×W'`` with ``H' = up·H``.
    """
    batch, styled = x.shape[0], styles.shape[0]
    if styled not in (1, batch):
        raise ValueError(f"styles for {styled} samples cannot modulate a batch of {batch}")
    _, in_channels, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(styled, 1, -1, 1, 1)  # S×O×I×k×k
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + DEMODULATION_EPS).rsqrt() if demodulate else None  # S×O
    if fused:
        if dcoefs is not None:
            w = w * dcoefs.reshape(styled, -1, 1, 1, 1)
        if styled == 1:
            x = _conv(x, w[0].to(x.dtype), up, padding, resample_filter, groups=1)
        else:
            x = x.reshape(1, -1, *x.shape[2:])
            x = _conv(x, w.reshape(-1, in_channels, kh, kw), up, padding, resample_filter, groups=batch)
            x = x.reshape(batch, -1, *x.shape[2:])
    else:
        x = x * styles.to(x.dtype).reshape(styled, -1, 1, 1)
        x = _conv(x, weight.to(x.dtype), up, padding, resample_filter, groups=1)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(styled, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _conv(x: Tensor, w: Tensor, up: int, padding: int, resample_filter: Tensor | None, groups: int) -> Tensor:
    """Plain or up-sampling convolution with ``groups`` independent kernel sets."""
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if resample_filter is None:
        raise ValueError("an up-sampling convolution needs a resample_filter")
    out_per_group, in_per_group, kh, kw = w.shape[0] // groups, w.shape[1], w.shape[2], w.shape[3]
    # A transposed convolution with stride `up` inserts the zeros and applies the kernel in
    # one op; the FIR filter then removes the aliasing (StyleGAN2's conv2d_resample).
    w_t = w.reshape(groups, out_per_group, in_per_group, kh, kw).transpose(1, 2)
    w_t = w_t.reshape(groups * in_per_group, out_per_group, kh, kw)
    x = F.conv_transpose2d(x, w_t, stride=up, groups=groups)
    fw = resample_filter.shape[-1]
    pad0 = padding + (fw + up - 1) // 2 - (kw - 1)
    pad1 = padding + (fw - up) // 2 - (kw - up)
    return upfirdn2d(x, resample_filter, padding=(pad0, pad1, pad0, pad1), gain=up * up)


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalized learning rate (EG3D ``FullyConnectedLayer``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b: Tensor | None = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation, gain=LRELU_GAIN if self.activation == "lrelu" else 1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """Camera-conditioned mapping ``(z, c) → ws``: N×num_ws×w_dim.

    ``z`` and the embedded camera are each normalized to unit second moment and
    concatenated, then passed through ``num_layers`` lrelu layers (lr multiplier 0.01).
    """

    w_avg: Tensor

    def __init__(
        self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2, lr_multiplier: float = 0.01
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, w_dim)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        # EG3D casts to float32 here; following the weights' dtype is the same in float32 and
        # lets a float64 copy evaluate the exact function (the parity tests' error budget).
        dtype = self.w_avg.dtype
        x = normalize_2nd_moment(z.to(dtype))
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.to(dtype)))
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = cast(FullyConnectedLayer, getattr(self, f"fc{idx}"))(x)
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution + noise + bias + lrelu (EG3D ``SynthesisLayer``)."""

    resample_filter: Tensor
    noise_const: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const", fused: bool = True) -> Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            noise = torch.randn(shape, device=x.device, dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif noise_mode not in ("none", "const", "random"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        x = modulated_conv2d(
            x, self.weight, styles, noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, fused=fused,
        )  # fmt: skip
        return bias_act(x, self.bias.to(x.dtype), "lrelu", gain=LRELU_GAIN, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}"


class ToRGBLayer(nn.Module):
    """Modulated 1×1 convolution without demodulation, to image (or tri-plane) channels."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor, fused: bool = True) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture synthesis network.

    ``in_channels == 0`` starts from a learned constant; ``upsample=False`` gives EG3D's
    ``SynthesisBlockNoUp`` (the first block of the 2×/4× super-resolution modules).
    Each block consumes ``num_conv + num_torgb`` ws.
    """

    resample_filter: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
        upsample: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.upsample = in_channels, resolution, upsample
        self.register_buffer("resample_filter", fir_filter())
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2 if upsample else 1, conv_clamp=conv_clamp
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "const"
    ) -> tuple[Tensor, Tensor]:
        # EG3D's 'inference_only' default: grouped per-sample kernels in eval mode only.
        fused = not self.training
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            if x is None:
                raise ValueError("this block needs the previous block's features")
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused=fused)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused=fused)
        if img is not None and self.upsample:
            img = upsample2d(img, self.resample_filter)
        # float32 as in EG3D (its fp16 blocks add into a float32 image); float64 in a .double() copy.
        y = self.torgb(x, next(w_iter), fused=fused).to(self.resample_filter.dtype)
        img = y if img is None else img + y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, upsample={self.upsample}"


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis from 4² to ``img_resolution``² (skip architecture).

    Channels at resolution ``r`` are ``min(channel_base // r, channel_max)``.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's ToRGB

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        x: Tensor | None = None
        img: Tensor | None = None
        w_idx = 0
        for res in self.block_resolutions:
            block = cast(SynthesisBlock, getattr(self, f"b{res}"))
            # Consecutive blocks share one w: a block's ToRGB uses the next block's first w.
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode=noise_mode)
            w_idx += block.num_conv
        assert img is not None
        return img


class StyleGAN2Backbone(nn.Module):
    """EG3D's ``StyleGAN2Backbone``: the mapping network and the synthesis network of the planes."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_layers: int = 2,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.num_ws, num_layers=mapping_layers)
