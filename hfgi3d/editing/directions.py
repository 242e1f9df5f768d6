"""Latent editing directions (InterFaceGAN on EG3D, docs/method.md and SPEC §6): files in, ``ws`` out.

A direction is a vector in W, applied as ``ws + α·d`` to every layer of an inverted latent or to a
layer range, or a per-layer W+ direction. EG3D directions circulate in several forms, and all of
them load here:

* ``.pt`` files: a tensor, or a dict with ``direction`` (and hfgi3d's ``metadata``);
* ``.npy`` files, including torch zip archives saved under an ``.npy`` name;
* shapes ``(512,)``, ``(1, 512)`` (one W direction), ``(L, 512)`` or ``(1, L, 512)`` (W+, one per
  layer: GOAE ships ``(1, 14, 512)`` files for ``ffhqrebalanced512-128``).

Conditional editing projects other attributes' directions out of this one (InterFaceGAN's
``d₁ − (d₁·d₂)d₂``, generalised to several conditions by projecting onto the orthogonal complement
of their span). Directions only fit the generator they were computed on: :func:`load_direction`
warns when the file's metadata names another one.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hfgi3d.errors import InputError

SHAPES = "(512,), (1, 512), (L, 512) or (1, L, 512)"
"""The direction shapes that load, for ``w_dim`` 512 (the text of the error for the others)."""


@dataclass(frozen=True)
class Direction:
    """A unit editing direction: ``vector`` is ``1×w_dim`` (W, every layer) or ``L×w_dim`` (W+)."""

    vector: Tensor
    layers: tuple[int, int] | None = None
    """``(start, stop)``: only the layers ``start ≤ l < stop`` are edited; ``None``: all."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What made it: generator file and sha256, scorer, attribute, samples, accuracy, seed."""

    def per_layer(self, num_ws: int) -> Tensor:
        """The direction for every layer of a ``num_ws``-layer latent, ``num_ws×w_dim`` (zero outside
        :attr:`layers`)."""
        vector = self.vector
        if len(vector) not in (1, num_ws):
            raise InputError(f"the direction has {len(vector)} layers but the generator has {num_ws}")
        out = vector.expand(num_ws, -1).clone()
        if self.layers is not None:
            start, stop = self.layers
            if not 0 <= start < stop <= num_ws:
                raise InputError(f"layer range {start}..{stop} is not inside the generator's 0..{num_ws}")
            keep = torch.zeros(num_ws, 1, dtype=out.dtype)
            keep[start:stop] = 1
            out = out * keep
        return out

    def apply(self, ws: Tensor, strength: float) -> Tensor:
        """``ws + strength·d`` for latents ``ws`` (``N×num_ws×w_dim``)."""
        return ws + strength * self.per_layer(ws.shape[1]).to(ws)


def _read_array(path: Path) -> Any:
    """The file's content: a tensor, an array or a dict (never executed: no pickles)."""
    if not path.is_file():
        raise InputError(f"no direction file {path}")
    if zipfile.is_zipfile(path):  # torch.save's format, whatever the file is called
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a bad archive
            raise InputError(f"{path} is a zip file but not a torch file ({type(error).__name__})") from None
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as error:
            raise InputError(f"{path} is not a plain .npy array ({error})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"{path} is neither a .npy array nor a torch file ({type(error).__name__})") from None


def _as_vector(content: Any, path: Path, w_dim: int) -> tuple[Tensor, dict[str, Any]]:
    """``(vector 1×w_dim or L×w_dim, metadata)`` of a file's content."""
    metadata: dict[str, Any] = {}
    if isinstance(content, dict):
        if "direction" not in content:
            raise InputError(f"{path} holds a dict without a 'direction' entry (keys: {', '.join(map(str, content))})")
        metadata = dict(content.get("metadata") or {})
        content = content["direction"]
    tensor = torch.as_tensor(np.asarray(content) if not isinstance(content, Tensor) else content)
    if not tensor.is_floating_point():
        raise InputError(f"{path}: a direction holds floating-point numbers, not {tensor.dtype}")
    tensor = tensor.detach().to(torch.float32)
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2 or tensor.shape[-1] != w_dim:
        raise InputError(f"{path}: a direction of shape {tuple(tensor.shape)} does not fit; expected {SHAPES}")
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{path}: the direction holds NaN or infinite values")
    return tensor, metadata


def unit(vector: Tensor) -> Tensor:
    """``vector`` (``L×w_dim``) scaled so that its layers' root-mean-square norm is 1.

    For a W direction (``L = 1``) that is the unit normal InterFaceGAN's SVM gives; a W+ file that
    repeats one unit W direction on every layer stays as it is, so a strength means the same step
    in W whichever of the two forms the direction came in."""
    norm = float(vector.norm()) / math.sqrt(len(vector))
    if norm == 0 or not math.isfinite(norm):
        raise InputError("a direction of zero length has no orientation")
    return vector / norm


def load_direction(
    path: str | Path,
    w_dim: int = 512,
    layers: tuple[int, int] | None = None,
    generator_sha256: str | None = None,
) -> Direction:
    """Read a direction file and normalise it with :func:`unit` (see the module docstring for the forms).

    ``layers`` restricts the edit to a layer range. With ``generator_sha256`` (the sha256 of the
    generator file the edit will use), a file whose metadata names another generator gets a
    warning: directions only fit the checkpoint they were computed on.
    """
    path = Path(path)
    vector, metadata = _as_vector(_read_array(path), path, w_dim)
    made_for = metadata.get("generator_sha256")
    if generator_sha256 is not None and made_for is not None and made_for != generator_sha256:
        other = metadata.get("generator", f"sha256 {str(made_for)[:12]}…")
        warnings.warn(
            f"{path.name} was computed on another generator ({other}): "
            "directions only fit the checkpoint they were made for",
            stacklevel=2,
        )
    return Direction(unit(vector), layers, metadata)


def condition(primal: Direction, *conditions: Direction) -> Direction:
    """``primal`` with the ``conditions``' directions projected out, renormalised (InterFaceGAN's
    conditional manipulation): editing along it leaves the conditioned attributes' scores unchanged
    to first order. W and W+ directions mix by repeating a W direction over the layers."""
    if not conditions:
        return primal
    layer_counts = {len(d.vector) for d in (primal, *conditions)} - {1}
    if len(layer_counts) > 1:
        raise InputError(f"directions with different layer counts ({sorted(layer_counts)}) cannot be combined")
    num_layers = layer_counts.pop() if layer_counts else 1
    primal_flat = primal.vector.expand(num_layers, -1).reshape(-1).double()
    basis = torch.stack([d.vector.expand(num_layers, -1).reshape(-1).double() for d in conditions], dim=1)
    # Least squares: the part of primal in span(basis), removed; lstsq copes with dependent conditions.
    coefficients = torch.linalg.lstsq(basis, primal_flat[:, None]).solution
    residual = primal_flat - (basis @ coefficients)[:, 0]
    if float(residual.norm()) < 1e-6:
        raise InputError("the direction lies in the span of its conditions: nothing is left to edit")
    vector = unit(residual.reshape(num_layers, -1)).to(primal.vector.dtype)
    conditioned_on = [d.metadata.get("attribute", "?") for d in conditions]
    return Direction(vector, primal.layers, {**primal.metadata, "conditioned_on": conditioned_on})
