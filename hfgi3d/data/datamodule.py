"""The inversion's data: the input view and, once stage 1 is done, one pseudo view per step.

Each training step receives a batch with the input view (``image`` 1×3×H×W, ``c25`` 1×25)
and, from stage 2 on, one auxiliary view drawn at random: ``aux_c25`` (``p_i``),
``aux_pseudo`` (``v_i``), ``aux_visible`` (``V_i``), ``aux_occluded`` (``O_i``),
``aux_mask_visible`` (``M_v``) and ``aux_mask_occluded`` (``M_o``).

The DataLoader only paces the steps; the tensors are attached in
:meth:`PseudoViewDataModule.on_after_batch_transfer` (by :meth:`~PseudoViewDataModule.assemble`),
i.e. right before the step runs, so the batch a step sees always reflects the pseudo views
built so far (Lightning prefetches one batch ahead). The auxiliary view a step draws depends on
``seed`` and the step number only, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from hfgi3d.data.inputs import load_camera, load_image, resolve_input
from hfgi3d.data.pseudo_views import PseudoViewConfig, PseudoViews, auxiliary_cameras, build_pseudo_views
from hfgi3d.generator import TriPlaneGenerator


class _Steps(IterableDataset):
    """An endless stream of empty batches: one per step (the step's tensors come from :meth:`assemble`)."""

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield {}


def _draw(available: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` indices in ``[0, available)``: distinct while there are enough, then with repeats."""
    if count <= available:
        return torch.randperm(available, generator=generator)[:count]
    return torch.randint(0, available, (count,), generator=generator)


class PseudoViewDataModule(L.LightningDataModule):
    """Input photo + camera, and the pseudo views that stage 2 trains on.

    Args:
        image: path of the aligned input photo (square), or ``sample`` for the bundled sample
            photo (``configs/demo.yaml``).
        camera: its camera (see :mod:`hfgi3d.data.inputs`); ``None`` with the sample photo.
        num_views: K auxiliary views: pre-built ones (``mode='prebuilt'``) or the orbit's.
        aux_views_per_step: auxiliary views per stage-2 step, rendered in one batch (the paper: 1).
        mode: ``prebuilt`` builds K views once before stage 2 and draws one per step;
            ``on_the_fly`` builds a fresh random view every step (slower, more poses).
        pseudo_views: how views are chosen and built.
        seed: seeds pose sampling and per-step draws.

    Views are built from the stage-1 latents with the stage-1 generator, a frozen copy that
    stage 2's tuning does not touch (:meth:`prepare_pseudo_views`), in both modes.
    """

    def __init__(
        self,
        image: str,
        num_views: int,
        aux_views_per_step: int,
        mode: Literal["prebuilt", "on_the_fly"],
        pseudo_views: PseudoViewConfig,
        seed: int,
        camera: str | None = None,
    ) -> None:
        super().__init__()
        self.image_path, self.camera_path = resolve_input(image, camera)
        self.num_views = num_views
        self.aux_views_per_step = aux_views_per_step
        self.mode = mode
        self.config = pseudo_views
        self.seed = seed
        self.image: Tensor | None = None
        self.c25: Tensor | None = None
        self.views: PseudoViews | None = None
        self._builder: tuple[TriPlaneGenerator, Tensor, Tensor] | None = None
        self._pose_rng = torch.Generator().manual_seed(seed)

    @property
    def image_id(self) -> str:
        return self.image_path.stem

    def load_input(self, resolution: int) -> None:
        """Read the photo at the generator's resolution and its camera (idempotent)."""
        if self.image is None:
            self.c25 = load_camera(self.camera_path, self.image_path)
            self.image = load_image(self.image_path, resolution)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None, num_workers=0)

    # Stage 1 → stage 2 hand-over --------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether auxiliary views can be drawn (stage 2)."""
        return self.views is not None or self._builder is not None

    def prepare_pseudo_views(self, generator: TriPlaneGenerator, ws_estimate: Tensor, ws_occluded: Tensor) -> None:
        """Build the K views from the stage-1 latent ``w_e`` and the occluded latent ``w_o``.

        ``generator`` must be the stage-1 generator and must not change afterwards (the module
        passes a frozen copy). In ``on_the_fly`` mode it and the latents are kept to build a view
        per step.
        """
        if self.image is None or self.c25 is None:
            raise RuntimeError("load_input must run before pseudo views are built")
        device = ws_estimate.device
        if self.mode == "on_the_fly":
            self._builder = (generator, ws_estimate.detach(), ws_occluded.detach())
            return
        cameras = auxiliary_cameras(self.c25, self.num_views, self.config, self._pose_rng).to(device)
        self.views = build_pseudo_views(
            generator, ws_estimate.detach(), ws_occluded.detach(), self.image.to(device),
            self.c25.to(device), cameras, self.config,
        )  # fmt: skip

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Tensor]:
        assert self.trainer is not None
        return self.assemble(self.trainer.global_step, self.trainer.strategy.root_device)

    def assemble(self, step: int, device: torch.device) -> dict[str, Tensor]:
        """Step ``step``'s batch: the input view, plus ``aux_views_per_step`` auxiliary views drawn
        for that step (distinct while the views last) once pseudo views are available; pre-built
        views come with their indices, ``aux_index`` (see the module docstring for the keys)."""
        if self.image is None or self.c25 is None:
            raise RuntimeError("the input was not loaded; the LightningModule's setup loads it")
        out = {"image": self.image.to(device), "c25": self.c25.to(device)}
        if not self.ready:
            return out
        draw = torch.Generator().manual_seed((self.seed << 32) + step)
        if self.views is not None:
            index = _draw(len(self.views), self.aux_views_per_step, draw)
            view = self.views.select(index).to(device)
            out["aux_index"] = index.to(device)
        else:
            assert self._builder is not None
            generator, ws_e, ws_o = self._builder
            cameras = auxiliary_cameras(self.c25, self.num_views, self.config, draw)  # fresh random or the orbit
            camera = cameras[_draw(len(cameras), self.aux_views_per_step, draw)].to(device)
            view = build_pseudo_views(generator, ws_e, ws_o, out["image"], out["c25"], camera, self.config)
        out.update(
            aux_c25=view.c25, aux_pseudo=view.pseudo, aux_visible=view.visible, aux_occluded=view.occluded,
            aux_mask_visible=view.mask_visible, aux_mask_occluded=view.mask_occluded,
        )  # fmt: skip
        return out

    # Checkpointing: pseudo views travel with the checkpoint, so a resumed run reuses them. ---

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"pose_rng": self._pose_rng.get_state()}
        if self.views is not None:
            state["views"] = {name: getattr(self.views, name).cpu() for name in self.views.__dataclass_fields__}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pose_rng.set_state(state_dict["pose_rng"])
        if "views" in state_dict:
            self.views = PseudoViews(**state_dict["views"])
