"""Weights & Biases: an offline-by-default logger and the media of an inversion.

``configs/logger/wandb.yaml`` selects :class:`WandbLogger`; :class:`WandbMedia` (always present
in ``python -m hfgi3d fit``, idle without a W&B logger) sends the result files to the run:

* ``media/input_vs_reconstruction``: the input photo and the reconstruction, side by side;
* ``media/novel_views`` and ``media/depth``: the yaw × pitch grid and its depth (near = white);
* ``media/pseudo_views``: rows v_i, V_i, O_i, M_v; ``media/pseudo_view_masks``: v_i tinted green
  where ``M_v`` (input texture) and red where ``M_o`` (generated texture);
* ``media/orbit``: the orbit video; ``media/mesh``: the mesh as a W&B ``Object3D`` (GLB).

Offline runs land in ``<output_dir>/wandb/offline-run-*``; ``wandb sync <that folder>`` uploads
them later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast, get_args

import lightning as L
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from hfgi3d.errors import InputError
from hfgi3d.run_folder import INPUT, RECONSTRUCTION

from .protocols import photos_of

WandbMode = Literal["offline", "online", "disabled"]
DEFAULT_MODE: WandbMode = "offline"


WANDB_ALIASES: dict[str, WandbMode] = {"dryrun": "offline", "run": "online"}
"""wandb's older names of the modes, still read from ``$WANDB_MODE``."""


def resolve_mode(mode: str | None) -> WandbMode:
    """``mode`` if given, else ``$WANDB_MODE``, else offline (nothing leaves the machine by default).

    Raises:
        InputError: a mode W&B does not have.
    """
    value = mode or os.environ.get("WANDB_MODE") or DEFAULT_MODE
    value = WANDB_ALIASES.get(value, value)
    if value not in get_args(WandbMode):
        raise InputError(f"W&B mode {value!r} (mode or $WANDB_MODE): use offline, online or disabled")
    return cast(WandbMode, value)


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger``, offline unless told otherwise.

    Args:
        project, group, tags, name, notes, job_type: the W&B run's fields (``name`` defaults to
            the image id in ``python -m hfgi3d fit``).
        save_dir: where the ``wandb/`` folder goes; ``None`` lets ``fit`` use the output folder.
        mode: ``offline``, ``online`` or ``disabled``; ``None`` reads ``$WANDB_MODE`` and falls
            back to ``offline``.
        log_model: upload checkpoints as artifacts (online runs only).
    """

    def __init__(
        self,
        project: str = "hfgi3d",
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
        notes: str | None = None,
        job_type: str = "inversion",
        save_dir: str | None = None,
        mode: WandbMode | None = None,
        log_model: bool = False,
    ) -> None:
        resolved = resolve_mode(mode)
        if resolved != "online" and log_model:
            raise ValueError(f"log_model needs an online W&B run, but the mode is {resolved!r}")
        super().__init__(
            name=name,
            save_dir=save_dir or ".",
            project=project,
            log_model=log_model,
            group=group,
            tags=tags,
            notes=notes,
            job_type=job_type,
            mode=resolved,
        )


def wandb_loggers(trainer: L.Trainer) -> list[LightningWandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, LightningWandbLogger)]


class WandbMedia(L.Callback):
    """Log an inversion's result files to every W&B logger of the trainer (see the module docstring).

    Runs after :class:`~hfgi3d.callbacks.outputs.InversionOutputs` has written them (``fit`` orders the
    callbacks). Without a W&B logger it does nothing: the files stay in the output folder.

    Args:
        output_dir: the result folder; ``None`` lets the ``fit`` command fill it in.
        video: log the orbit video.
        mesh: log the mesh (``mesh.glb``) as an ``Object3D``.
    """

    def __init__(self, output_dir: str | None = None, video: bool = True, mesh: bool = True) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.video = video
        self.mesh = mesh
        self.logged: list[str] = []
        """Keys logged by the last run."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero:
            return
        if self.output_dir is None:
            raise ValueError("WandbMedia needs an output_dir")
        datamodule = photos_of(trainer)
        folders = datamodule.photo_folders(self.output_dir)
        media: dict[str, Any] = {}
        for folder in folders:  # a batch: media/<image id>/... for each photo
            prefix = f"media/{folder.name}/" if len(folders) > 1 or datamodule.batched else "media/"
            media.update({key.replace("media/", prefix, 1): value for key, value in self.media(folder).items()})
        for logger in loggers:
            logger.log_metrics(media, step=trainer.global_step)
        self.logged = sorted(media)

    def media(self, folder: Path) -> dict[str, Any]:
        """W&B media objects of the files present in ``folder``."""
        import wandb

        def image(name: str, caption: str) -> Any:
            return wandb.Image(str(folder / name), caption=caption)

        media: dict[str, Any] = {}
        if (folder / INPUT).is_file() and (folder / RECONSTRUCTION).is_file():
            media["media/input_vs_reconstruction"] = [image(INPUT, "input"), image(RECONSTRUCTION, "reconstruction")]
        for key, name, caption in (
            ("media/novel_views", "novel_views.png", "novel views (rows: pitch, columns: yaw)"),
            ("media/depth", "depth.png", "depth of the novel views (near = white)"),
            ("media/pseudo_views", "pseudo_views.png", "rows: pseudo view v_i, visible V_i, occluded O_i, M_v"),
            ("media/pseudo_view_masks", "pseudo_view_masks.png", "green: M_v (input texture), red: M_o"),
        ):
            if (folder / name).is_file():
                media[key] = image(name, caption)
        if self.video and (folder / "orbit.mp4").is_file():
            media["media/orbit"] = wandb.Video(str(folder / "orbit.mp4"), format="mp4")
        if self.mesh and (folder / "mesh.glb").is_file():
            media["media/mesh"] = wandb.Object3D(str(folder / "mesh.glb"))
        return media
