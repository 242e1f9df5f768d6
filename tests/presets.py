"""The presets as constructor arguments, for tests that build the modules directly instead of through
``python -m hfgi3d fit``. Values come from ``configs/`` (:func:`hfgi3d.presets.load_preset`), so a test
exercises what users run; each test overrides only what it shrinks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image

from hfgi3d.cameras import orbit_c25
from hfgi3d.data.pseudo_views import PseudoViewConfig
from hfgi3d.generator import open_generator
from hfgi3d.metrics.evaluation import EvaluationConfig
from hfgi3d.presets import load_preset

PAPER = ("hfgi3d.yaml",)
OFFICIAL = ("hfgi3d.yaml", "hfgi3d_official.yaml")


def model_args(**overrides: Any) -> dict[str, Any]:
    """``InversionModule`` arguments: the paper's, then ``overrides``."""
    return {**load_preset(*PAPER)["model"], **overrides}


def pseudo_view_config(**overrides: Any) -> PseudoViewConfig:
    """The paper's pseudo-view settings, then ``overrides``."""
    return PseudoViewConfig(**{**load_preset(*PAPER)["data"]["pseudo_views"], **overrides})


def data_args(*presets: str, **overrides: Any) -> dict[str, Any]:
    """``PseudoViewDataModule`` arguments without ``image``/``camera``: the presets' (default: the
    paper's), then ``overrides``."""
    data = dict(load_preset(*(presets or PAPER))["data"])
    data["pseudo_views"] = PseudoViewConfig(**data["pseudo_views"])
    return {**data, **overrides}


def evaluation_config(**overrides: Any) -> EvaluationConfig:
    """The paper's evaluation protocol (with the values ``fit`` links in), then ``overrides``."""
    return EvaluationConfig(**{**load_preset(*PAPER)["evaluation"]["metrics"], **overrides})


def cpu_trainer(folder: Path, steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    """A quiet CPU ``Trainer`` for ``steps`` steps (checkpointing only with a ``ModelCheckpoint`` among
    ``callbacks``)."""
    return L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=folder, callbacks=callbacks, enable_checkpointing=any(
            isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks
        ),
    )  # fmt: skip


FAST_MODEL = model_args(
    generator="tiny", w_avg_samples=16, estimate_steps=3, occluded_steps=2, pseudo_multiview_steps=3,
    estimate_lr=0.01, pseudo_multiview_lr=1e-3, lpips_resize=None,
)  # fmt: skip
"""The paper's model arguments shrunk for the tiny generator: 3 + 2 + 3 steps."""
FAST_VIEWS = pseudo_view_config(poisson_iterations=50)


def write_tiny_photos(folder: Path, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """Photos the tiny generator can represent (its renders at a latent and camera per name), each
    with its camera beside it (``<name>.png`` and ``<name>.json`` in ``folder``)."""
    generator = open_generator("tiny")
    for index, name in enumerate(names):
        c25 = orbit_c25(0.15 * (index - 1), -0.05 + 0.05 * index)
        with torch.no_grad():
            z = torch.randn(1, 512, generator=torch.Generator().manual_seed(11 + index))
            image = generator(z, c25, deterministic=True)["image"].clamp(-1, 1)
        pixels = ((image[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.json").write_text(json.dumps(c25[0].tolist()))
    return folder
