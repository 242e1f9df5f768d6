"""The inversion's data: the input views and, once stage 1 is done, pseudo views per step.

The DataModule owns a batch of N photos (one with ``image``; up to ``batch_size`` of ``images``,
the batch ``batch_index``). Each training step receives the input views (``image`` N×3×H×W,
``c25`` N×25) and, from stage 2 on, ``aux_views_per_step`` (A) auxiliary views of each photo
drawn at random, photo-major (photo 0's A views, then photo 1's): ``aux_c25`` (``p_i``, N·A×25),
``aux_pseudo`` (``v_i``), ``aux_visible`` (``V_i``), ``aux_occluded`` (``O_i``),
``aux_mask_visible`` (``M_v``) and ``aux_mask_occluded`` (``M_o``). Every photo draws the same
view indices and pose offsets a single-photo run with the same seed draws, so a batch reproduces
one-photo-at-a-time runs.

The DataLoader only paces the steps; the tensors are attached in
:meth:`PseudoViewDataModule.on_after_batch_transfer` (by :meth:`~PseudoViewDataModule.assemble`),
i.e. right before the step runs, so the batch a step sees always reflects the pseudo views
built so far (Lightning prefetches one batch ahead). The auxiliary view a step draws depends on
``seed`` and the step number only, so a resumed run draws what an uninterrupted one would.

The LightningModule sees the data only through :class:`PseudoViewSource`: it asks once for the
photos at its generator's resolution, hands the stage-1 result over (:class:`StageOne`) when
stage 1 is done (and gets the pre-built views back, to compute their fixed LPIPS features once),
and otherwise reads what each step's batch carries. The cameras in the batch
are always those the photos came with; the module owns camera refinement and hands the refined
cameras over with the stage-1 result, so that the pseudo views are built around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from hfgi3d.data.inputs import list_photos, load_camera, load_image, resolve_input
from hfgi3d.data.pseudo_views import PseudoViewConfig, PseudoViews, auxiliary_cameras, build_pseudo_views
from hfgi3d.errors import InputError
from hfgi3d.generator import TriPlaneGenerator


class _Steps(IterableDataset):
    """An endless stream of empty batches: one per step (the step's tensors come from :meth:`assemble`)."""

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield {}


@dataclass(frozen=True)
class StageOne:
    """What stage 1 hands the data pipeline for the pseudo views (``N`` photos)."""

    generator: Callable[[], TriPlaneGenerator]
    """Makes the generator as stage 1 left it: a frozen copy, which stage 2's tuning does not
    touch (called only when views are to be built, not when a checkpoint brought them back)."""
    ws_estimate: Tensor
    """``w_e``, ``N×num_ws×w_dim``: the views' geometry."""
    ws_occluded: Tensor
    """``w_o``, ``N×num_ws×w_dim``: the texture of the parts the photo does not show."""
    c25: Tensor | None = None
    """The refined input cameras (``N×25``) when stage 1 refined them; ``None``: as loaded."""


@runtime_checkable
class PseudoViewSource(Protocol):
    """The two calls the inversion module makes on its data pipeline; every other tensor it
    needs comes with each step's batch (see the module docstring for the keys)."""

    def load_input(self, resolution: int) -> None:
        """Read the photos at the generator's resolution (``resolution``) and their cameras."""

    def prepare_pseudo_views(
        self, stage_one: StageOne, report: Callable[[str], None] | None = None
    ) -> PseudoViews | None:
        """Build (or get ready to build) the pseudo views from stage 1's result; return the
        pre-built ones (``None`` when views are built per step)."""


def _draw(available: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` indices in ``[0, available)``: distinct while there are enough, then with repeats."""
    if count <= available:
        return torch.randperm(available, generator=generator)[:count]
    return torch.randint(0, available, (count,), generator=generator)


class PseudoViewDataModule(L.LightningDataModule):
    """Input photos + cameras, and the pseudo views that stage 2 trains on.

    Args:
        image: path of one aligned input photo (square), or ``sample`` for the bundled sample
            photo (``configs/demo.yaml``).
        camera: its camera (see :mod:`hfgi3d.data.inputs`); ``None`` with the sample photo.
        images: several photos instead of ``image``: an EG3D ``dataset.json``, a folder holding one,
            or a folder of photos with a camera file beside each (:func:`~hfgi3d.data.inputs.list_photos`).
        batch_size: photos inverted together (``images`` only), each with its own latent,
            generator weights and optimizer state.
        batch_index: which batch of ``batch_size`` photos (in file-name order) this fit inverts;
            ``fit`` runs them all, one after the other.
        num_views: K auxiliary views per photo: pre-built ones (``mode='prebuilt'``) or the orbit's.
        aux_views_per_step: auxiliary views per photo and stage-2 step, rendered in one batch (the paper: 1).
        mode: ``prebuilt`` builds K views once before stage 2 and draws one per step;
            ``on_the_fly`` builds a fresh random view every step (slower, more poses).
        pseudo_views: how views are chosen and built.
        seed: seeds pose sampling and per-step draws.

    Views are built from the stage-1 latents with the stage-1 generator, a frozen copy that
    stage 2's tuning does not touch (:meth:`prepare_pseudo_views`), in both modes.
    """

    def __init__(
        self,
        num_views: int,
        aux_views_per_step: int,
        mode: Literal["prebuilt", "on_the_fly"],
        pseudo_views: PseudoViewConfig,
        seed: int,
        image: str | None = None,
        camera: str | None = None,
        images: str | None = None,
        batch_size: int = 1,
        batch_index: int = 0,
    ) -> None:
        super().__init__()
        if (image is None) == (images is None):
            raise InputError("give data.image (one photo) or data.images (a folder or dataset.json), not both")
        if batch_size < 1:
            raise InputError(f"data.batch_size must be at least 1, got {batch_size}")
        if image is not None:
            image_path, camera_path = resolve_input(image, camera)
            every: list[tuple[Path, str | None]] = [(image_path, camera_path)]
        else:
            every = list(list_photos(str(images)))
        self.num_batches = -(-len(every) // batch_size)
        if not 0 <= batch_index < self.num_batches:
            raise InputError(
                f"data.batch_index {batch_index} is out of range: {len(every)} photos make {self.num_batches} batch(es)"
            )
        self.photos = every[batch_index * batch_size : (batch_index + 1) * batch_size]
        self.batched = images is not None
        self.num_views = num_views
        self.aux_views_per_step = aux_views_per_step
        self.mode = mode
        self.config = pseudo_views
        self.seed = seed
        self.image: Tensor | None = None
        self.c25: Tensor | None = None
        self.views: PseudoViews | None = None
        # on_the_fly: the stage-1 generator, w_e, w_o and the cameras the views are built around.
        self._builder: tuple[TriPlaneGenerator, Tensor, Tensor, Tensor] | None = None
        self._pose_rng = torch.Generator().manual_seed(seed)

    @property
    def photo_count(self) -> int:
        """N, the photos of this batch."""
        return len(self.photos)

    @property
    def image_ids(self) -> list[str]:
        return [path.stem for path, _ in self.photos]

    def photo_folders(self, output_dir: str | Path) -> list[Path]:
        """Each photo's result folder: ``output_dir`` itself for one ``image``, else ``output_dir/<image id>``."""
        if not self.batched:
            return [Path(output_dir)]
        return [Path(output_dir) / image_id for image_id in self.image_ids]

    def load_input(self, resolution: int) -> None:
        """Read the photos at the generator's resolution and their cameras (idempotent)."""
        if self.image is None:
            self.c25 = torch.cat([load_camera(camera, path) for path, camera in self.photos])
            self.image = torch.cat([load_image(path, resolution) for path, _ in self.photos])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None, num_workers=0)

    # Stage 1 → stage 2 hand-over --------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether auxiliary views can be drawn (stage 2)."""
        return self.views is not None or self._builder is not None

    def prepare_pseudo_views(
        self, stage_one: StageOne, report: Callable[[str], None] | None = None
    ) -> PseudoViews | None:
        """Build each photo's K views from its stage-1 latents ``w_e`` and ``w_o`` with the stage-1
        generator, around its input camera (the refined one when ``stage_one.c25`` is given), photo
        after photo, each from the pose state a single-photo run starts with.

        ``stage_one.generator`` must not change afterwards (the module passes a frozen copy). In
        ``on_the_fly`` mode the stage-1 result is kept to build views per step. Views already
        restored from a checkpoint are kept as they are. ``report`` receives one-line progress
        messages for the console.

        Returns:
            The pre-built views (photo-major, ``aux_index`` indexes them), or ``None`` in
            ``on_the_fly`` mode.
        """
        if self.image is None or self.c25 is None:
            raise RuntimeError("load_input must run before pseudo views are built")
        if self.mode == "on_the_fly":
            self._builder = (
                stage_one.generator(),
                stage_one.ws_estimate.detach(),
                stage_one.ws_occluded.detach(),
                self._centres(stage_one.c25, stage_one.ws_estimate.device),
            )
            return None
        if self.views is not None:  # restored with the checkpoint
            return self.views
        device = stage_one.ws_estimate.device
        centres = self._centres(stage_one.c25, device)
        started = time.perf_counter()
        if report is not None:
            report(
                f"building {self.num_views} pseudo views"
                + (f" of each of {self.photo_count} photos" if self.photo_count > 1 else "")
            )
        # A copy of the pose RNG, committed once every view is built: a run interrupted during the
        # build resumes from the state it started with, and builds the same views.
        poses = torch.Generator().manual_seed(0)
        start = self._pose_rng.get_state()
        generator = stage_one.generator()
        views = []
        for photo in range(self.photo_count):
            poses.set_state(start)
            cameras = auxiliary_cameras(centres[photo : photo + 1].cpu(), self.num_views, self.config, poses)
            views.append(
                build_pseudo_views(
                    generator,
                    stage_one.ws_estimate[photo : photo + 1].detach(),
                    stage_one.ws_occluded[photo : photo + 1].detach(),
                    self.image[photo : photo + 1].to(device),
                    centres[photo : photo + 1],
                    cameras.to(device),
                    self.config,
                )
            )
        self.views = PseudoViews.cat(views)
        self._pose_rng.set_state(poses.get_state())
        if report is not None:
            report(f"pseudo views built in {time.perf_counter() - started:.1f} s")
        return self.views

    def _centres(self, refined: Tensor | None, device: torch.device) -> Tensor:
        """The input cameras the pseudo views are built around (``N×25`` on ``device``)."""
        assert self.c25 is not None
        return (self.c25 if refined is None else refined.detach()).to(device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Tensor]:
        assert self.trainer is not None
        return self.assemble(self.trainer.global_step, self.trainer.strategy.root_device)

    def assemble(self, step: int, device: torch.device) -> dict[str, Tensor]:
        """Step ``step``'s batch: the input views, plus ``aux_views_per_step`` auxiliary views of each
        photo drawn for that step (distinct while the views last) once pseudo views are available;
        pre-built views come with their indices among all the batch's views, ``aux_index`` (see the
        module docstring for the other keys)."""
        if self.image is None or self.c25 is None:
            raise RuntimeError("the input was not loaded; the LightningModule's setup loads it")
        out = {"image": self.image.to(device), "c25": self.c25.to(device)}
        if not self.ready:
            return out
        if self.views is not None:
            per_photo = len(self.views) // self.photo_count
            draw = torch.Generator().manual_seed((self.seed << 32) + step)
            index = _draw(per_photo, self.aux_views_per_step, draw)
            flat = (torch.arange(self.photo_count)[:, None] * per_photo + index[None]).flatten()  # photo-major
            view = self.views.select(flat).to(device)
            out["aux_index"] = flat.to(device)
        else:
            assert self._builder is not None
            generator, ws_e, ws_o, centres = self._builder
            parts = []
            for photo in range(self.photo_count):
                draw = torch.Generator().manual_seed((self.seed << 32) + step)
                # Fresh random poses (or the orbit) around the input camera the views are built for.
                cameras = auxiliary_cameras(centres[photo : photo + 1].cpu(), self.num_views, self.config, draw)
                camera = cameras[_draw(len(cameras), self.aux_views_per_step, draw)].to(device)
                parts.append(
                    build_pseudo_views(
                        generator,
                        ws_e[photo : photo + 1],
                        ws_o[photo : photo + 1],
                        out["image"][photo : photo + 1],
                        centres[photo : photo + 1],
                        camera,
                        self.config,
                    )
                )
            view = PseudoViews.cat(parts)
        out.update(
            aux_c25=view.c25, aux_pseudo=view.pseudo, aux_visible=view.visible, aux_occluded=view.occluded,
            aux_mask_visible=view.mask_visible, aux_mask_occluded=view.mask_occluded,
        )  # fmt: skip
        return out

    # Checkpointing: pseudo views travel with the checkpoint, so a resumed run reuses them. ---

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"pose_rng": self._pose_rng.get_state(), "image_ids": self.image_ids}
        if self.views is not None:
            state["views"] = {name: getattr(self.views, name).cpu() for name in self.views.__dataclass_fields__}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("image_ids", self.image_ids)
        if list(saved) != self.image_ids:
            raise InputError(
                f"the checkpoint inverts {', '.join(saved)}, not this batch ({', '.join(self.image_ids)}): "
                "resume with the data options it was started with"
            )
        self._pose_rng.set_state(state_dict["pose_rng"])
        if "views" in state_dict:
            self.views = PseudoViews(**state_dict["views"])
