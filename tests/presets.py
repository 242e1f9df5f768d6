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
from hfgi3d.inversion import InversionModule
from hfgi3d.metrics.evaluation import EvaluationConfig
from hfgi3d.presets import load_preset, merged, preset_path, put

PAPER = ("hfgi3d.yaml",)
OFFICIAL = ("hfgi3d.yaml", "hfgi3d_official.yaml")


def with_overrides(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``config`` with ``overrides`` merged in; ``group__field`` names a nested key (``loss__lambda_lpips=0``)."""
    nested: dict[str, Any] = {}
    for name, value in overrides.items():
        put(nested, name.replace("__", "."), value)
    return merged(config, nested)


def model_config(**overrides: Any) -> dict[str, Any]:
    """The paper's ``model`` config (nested, as :meth:`InversionModule.from_config` takes it), then
    ``overrides`` (:func:`with_overrides`)."""
    return with_overrides(load_preset(*PAPER)["model"], **overrides)


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


TEST_LPIPS_SIZE = 64
"""LPIPS input size of the shrunk fits: VGG16 on 64² instead of the tiny generator's 128² renders takes
a 8-step fit from 8.7 s to 5.3 s on one CPU thread (the network and its masking are the same)."""

FAST_MODEL = model_config(
    generator="tiny", w_avg_samples=16, estimate__steps=3, occluded__steps=2, pseudo_multiview__steps=3,
    estimate__lr=0.01, pseudo_multiview__lr=1e-3, loss__lpips_resize=TEST_LPIPS_SIZE,
)  # fmt: skip
"""The paper's model config shrunk for the tiny generator: 3 + 2 + 3 steps."""


def fast_module(model: dict[str, Any] = FAST_MODEL, **overrides: Any) -> InversionModule:
    """An ``InversionModule`` of ``model`` (default :data:`FAST_MODEL`) with ``overrides`` (:func:`with_overrides`)."""
    return InversionModule.from_config(with_overrides(model, **overrides))


SHRUNK_FIT: dict[str, Any] = {
    "model.w_avg_samples": 16, "model.estimate.steps": 3, "model.occluded.steps": 2,
    "model.pseudo_multiview.steps": 3, "model.loss.lpips_resize": TEST_LPIPS_SIZE, "data.num_views": 2,
    "data.pseudo_views.poisson_iterations": 20, "outputs.orbit_frames": 0, "outputs.mesh_resolution": 0,
    "outputs.grid_size": "[2, 1]",
    "evaluation.every_n_steps": 0, "evaluation.metrics.pose_accuracy": False, "trainer.enable_progress_bar": False,
}  # fmt: skip
"""The options that shrink ``make demo``'s fit (configs/demo.yaml) to a test: 3 + 2 + 3 steps, two pseudo
views, two novel views in ``novel_views.png`` (not 15), no orbit, mesh or pose check, no progress bar."""


def shrunk_options(**options: Any) -> list[str]:
    """:data:`SHRUNK_FIT` with ``options`` over it, as command-line arguments (``model__estimate__steps=6``
    for ``--model.estimate.steps 6``; ``None`` drops an option, leaving the presets' value)."""
    chosen = {**SHRUNK_FIT, **{name.replace("__", "."): value for name, value in options.items()}}
    args = []
    for name, value in chosen.items():
        if value is not None:
            args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def shrunk_fit(*presets: str, **options: Any) -> list[str]:
    """``fit`` arguments: the paper's preset, the demo's, more ``presets`` (names as :func:`preset_path`
    takes them, e.g. ``logger/wandb.yaml``), then :func:`shrunk_options`."""
    args = ["fit"]
    for preset in ("hfgi3d.yaml", "demo.yaml", *presets):
        args += ["--config", str(preset_path(preset))]
    return args + shrunk_options(**options)


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
