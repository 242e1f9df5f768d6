"""What the callbacks read from a fit: the inversion module and the photos, as two Protocols.

Every callback of this package reaches the LightningModule through :func:`inversion_of` and the
DataModule through :func:`photos_of`, typed as :class:`Inversion` and :class:`Photos`, so a
callback uses only what is listed here and a module or DataModule that misses a member is refused
in one line when the fit starts. :class:`hfgi3d.inversion.InversionModule` and
:class:`hfgi3d.data.datamodule.PseudoViewDataModule` satisfy them (mypy checks it below).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch import Tensor

if TYPE_CHECKING:
    from hfgi3d.data.datamodule import PseudoViewDataModule
    from hfgi3d.data.pseudo_views import PseudoViews
    from hfgi3d.generator import TriPlaneGenerator
    from hfgi3d.generator.stacked import StackedGenerator
    from hfgi3d.inversion import InversionModule


@runtime_checkable
class Inversion(Protocol):
    """The inversion as the callbacks see it (:class:`hfgi3d.inversion.InversionModule`)."""

    G: StackedGenerator
    """Every photo's generator (stacked), tuned in stage 2."""
    alive: Tensor
    """``N`` booleans: photos still being inverted (a non-finite loss drops one)."""
    failures: dict[int, str]
    """Dropped photo → why."""
    ws_estimate: Tensor
    """``N×num_ws×w_dim``: stage 1's latent ``w_e``."""
    result_dtype: torch.dtype
    """The precision the results are saved in (set by the outputs callback at setup)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def ws_occluded(self) -> Tensor: ...

    def ws(self) -> Tensor:
        """``N×num_ws×w_dim``: the current latent of each photo."""
        ...

    def photo_generator(self, photo: int) -> TriPlaneGenerator: ...

    def input_camera(self, c25: Tensor) -> Tensor:
        """The input cameras the results are rendered with (refined ones, when refined)."""
        ...

    def camera_record(self, c25: Tensor, photo: int = 0) -> dict[str, Any]: ...

    def stage_spans(self) -> list[tuple[str, int, int]]:
        """``(stage, first step, end step)`` of each stage that runs."""
        ...

    def stage_at(self, step: int) -> str: ...

    def finish_weights(self) -> None:
        """Round the tuned weights to ``result_dtype``, once; called before any result is read."""
        ...


@runtime_checkable
class Photos(Protocol):
    """The photos of a fit as the callbacks see them (:class:`hfgi3d.data.datamodule.PseudoViewDataModule`)."""

    image: Tensor | None
    """``N×3×H×W`` photos in ``[-1, 1]`` (``None`` before setup)."""
    c25: Tensor | None
    """``N×25`` input cameras as given."""
    views: PseudoViews | None
    """The pre-built pseudo views, photo-major (``None`` when built on the fly)."""
    batched: bool
    """Whether the photos came from ``data.images`` (each gets a folder of its own)."""

    @property
    def photo_count(self) -> int: ...

    @property
    def image_ids(self) -> list[str]: ...

    def photo_folders(self, output_dir: str | Path) -> list[Path]: ...


def inversion_of(module: L.LightningModule) -> Inversion:
    """``module`` as an :class:`Inversion`; a module without its members is refused in one line."""
    if not isinstance(module, Inversion):
        raise TypeError(f"hfgi3d's callbacks need an InversionModule, not {type(module).__name__}")
    return module


def photos_of(trainer: L.Trainer) -> Photos:
    """The trainer's DataModule as :class:`Photos` (refused in one line when it is not one)."""
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, Photos):
        raise TypeError(f"hfgi3d's callbacks need a PseudoViewDataModule, not {type(datamodule).__name__}")
    return datamodule


if TYPE_CHECKING:  # the fit's classes satisfy the protocols (checked by mypy, never run)

    def _conforms(module: InversionModule, data: PseudoViewDataModule) -> tuple[Inversion, Photos]:
        return module, data
