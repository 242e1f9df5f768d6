"""Reading the input photo and camera; the config presets."""

from __future__ import annotations

import json
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hfgi3d.benchmarks.__main__ import BASE_PRESET, METHODS
from hfgi3d.cameras import orbit_c25
from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.data.inputs import SAMPLE_CAMERA, SAMPLE_IMAGE, load_camera, load_image
from hfgi3d.errors import InputError
from hfgi3d.fit import InversionCLI
from hfgi3d.inversion import InversionModule, lr_factor
from hfgi3d.presets import preset_path
from hfgi3d.validation import FitInputs, check_fit_inputs
from tests.presets import fast_module


@pytest.fixture
def c25() -> torch.Tensor:
    return orbit_c25(0.2, -0.1)


def test_camera_formats(tmp_path: Path, c25: torch.Tensor) -> None:
    image = tmp_path / "face.png"
    (tmp_path / "list.json").write_text(json.dumps(c25[0].tolist()))
    (tmp_path / "dict.json").write_text(json.dumps({"c25": c25[0].tolist()}))
    dataset = {"labels": [["other.png", [0.0] * 25], ["00000/face.png", c25[0].tolist()]]}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    np.save(tmp_path / "camera.npy", c25[0].numpy())
    for name in ("list.json", "dict.json", "dataset.json", "camera.npy"):
        torch.testing.assert_close(load_camera(tmp_path / name, image), c25)


def test_camera_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no camera for"):
        load_camera(None, "face.png")
    with pytest.raises(InputError, match="camera file not found"):
        load_camera(tmp_path / "missing.json", "face.png")
    (tmp_path / "short.json").write_text("[1, 2, 3]")
    with pytest.raises(InputError, match="has 3 numbers, expected 25"):
        load_camera(tmp_path / "short.json", "face.png")
    (tmp_path / "nan.json").write_text(json.dumps([0.0] * 24 + [float("nan")]))
    with pytest.raises(InputError, match=r"NaN or infinite values \(at index 24\)"):
        load_camera(tmp_path / "nan.json", "face.png")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a.png", [0] * 25]]}))
    with pytest.raises(InputError, match=r"no label for face\.png"):
        load_camera(tmp_path / "dataset.json", "face.png")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_camera(tmp_path / "bad.json", "face.png")


def test_image_loading(tmp_path: Path) -> None:
    image = load_image(SAMPLE_IMAGE, 128)
    assert image.shape == (1, 3, 128, 128) and -1 <= image.min() and image.max() <= 1
    torch.testing.assert_close(load_camera(SAMPLE_CAMERA, SAMPLE_IMAGE), orbit_c25(0.0, 0.0), atol=1e-6, rtol=0)
    Image.new("RGB", (64, 48)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match=r"64×48 px: hfgi3d needs a square"):
        load_image(tmp_path / "wide.png", 128)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="not an image file"):
        load_image(tmp_path / "text.png", 128)
    with pytest.raises(InputError, match="photo not found"):
        load_image(tmp_path / "missing.png", 128)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180°: displayed with the white half on the right
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "rotated.jpg", 32)
    assert image[0, :, :, 24:].mean() > 0.9 and image[0, :, :, :8].mean() < -0.9


class _Parsed(Exception):  # a signal that carries the parsed config, not an error
    def __init__(self, config: Any) -> None:
        self.config = config


class _ParseOnly(InversionCLI):
    """Parse and validate the arguments as ``fit`` does, then stop before anything is built."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.config["fit"])


def _resolved(*configs: str, extra: Sequence[str] = ()) -> Any:
    args = ["fit"]
    for config in configs:
        args += ["--config", str(preset_path(config))]
    with pytest.raises(_Parsed) as parsed:
        _ParseOnly(InversionModule, PseudoViewDataModule, args=[*args, *extra])
    return parsed.value.config


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_benchmark_method_composes_to_a_complete_config(method: str) -> None:
    overrides = [str(preset_path(name)) for name in METHODS[method]]
    config = _resolved(BASE_PRESET, *overrides, extra=["--model.generator", "g.pkl", "--data.image", "face.png"])
    paper = _resolved(BASE_PRESET, extra=["--model.generator", "g.pkl", "--data.image", "face.png"])
    changed = {key for key in paper.keys() if key.startswith(("model.", "data.")) and config.get(key) != paper.get(key)}
    expected = {
        "hfgi3d": set(),
        "pti": {"model.pseudo_multiview.use_pseudo_views", "model.pseudo_multiview.freeze_latent"},
        "ablation_no_occluded": {"data.pseudo_views.occluded_source", "model.occluded.steps"},
        "ablation_no_visible_texture": {"data.pseudo_views.visible_source"},
    }
    if method in expected:
        assert changed == expected[method]
    else:  # the release changes many values; the ones that define it:
        assert config["model.pseudo_multiview.aux_target"] == "blended" and config["data.pseudo_views.poses"] == "orbit"
        assert config["model.latent_space"] == "w+" and config["data.num_views"] == 30


def test_the_photo_preset_only_turns_camera_refinement_on_and_keeps_fp32() -> None:
    """(bf16 is qualified for the paper's preset alone: benchmarks/README.md, "bf16 qualification".)"""
    given = ["--model.generator", "g.pkl", "--data.image", "face.png"]
    config, paper = _resolved(BASE_PRESET, "photo.yaml", extra=given), _resolved(BASE_PRESET, extra=given)
    changed = {key for key in paper.keys() if key != "config" and config.get(key) != paper.get(key)}
    assert changed == {"model.camera.refine", "trainer.precision"} and config["model.camera.refine"] is True
    assert paper["trainer.precision"] == "bf16-mixed" and config["trainer.precision"] == "32-true"


def test_demo_preset_picks_the_tiny_generator_and_the_sample_photo() -> None:
    config = _resolved(BASE_PRESET, "demo.yaml")
    assert config["model.generator"] == "tiny" and config["data.image"] == "sample"


def test_the_paper_preset_has_no_generator_or_photo_of_its_own() -> None:
    with pytest.raises(ArgumentError, match=r"required: fit\.model\.generator"):
        _resolved(BASE_PRESET, extra=["--data.image", "face.png"])
    # The photo is data.image or data.images: which one is checked before anything is built.
    config = _resolved(BASE_PRESET, extra=["--model.generator", "tiny"])
    assert config["data.image"] is None and config["data.images"] is None
    with pytest.raises(InputError, match=r"no photo: pass --data\.image"):
        check_fit_inputs(FitInputs.from_config(config.as_dict()))
    both = FitInputs(generator="tiny", image="face.png", images="photos/")
    with pytest.raises(InputError, match="not both"):
        check_fit_inputs(both)


def test_linked_values_are_typed_once() -> None:
    config = _resolved(BASE_PRESET, "demo.yaml", extra=["--data.pseudo_views.yaw_range_rad", "0.5"])
    assert config["evaluation.metrics.novel_yaw_rad"] == 0.5 and config["outputs.grid_yaw_rad"] == 0.5
    assert config["evaluation.metrics.lpips_resize"] is None  # the demo's model.loss.lpips_resize
    stages = ("model.estimate.steps", "model.occluded.steps", "model.pseudo_multiview.steps")
    assert config["trainer.max_steps"] == sum(config[key] for key in stages)  # 50 + 20 + 350 in the demo


def test_learning_rate_schedule() -> None:
    assert lr_factor(10, 100, 0.0, 0.0) == 1.0
    assert lr_factor(0, 100, 0.05, 0.25) == 0.0  # warm-up starts at 0
    assert lr_factor(50, 100, 0.05, 0.25) == pytest.approx(1.0)
    assert lr_factor(100, 100, 0.05, 0.25) == pytest.approx(0.0, abs=1e-12)
    assert 0 < lr_factor(90, 100, 0.05, 0.25) < 1.0


def test_stage_two_can_give_the_latent_its_own_lr_and_ramp_the_lr_down() -> None:
    module = fast_module(pseudo_multiview__steps=4, pseudo_multiview__latent_lr=1e-5, pseudo_multiview__lr_rampdown=0.5)
    optimizers, schedulers = module.configure_optimizers()
    tune, scheduler = optimizers[-1], schedulers[-1]["scheduler"]
    (generator_group, latent_group) = tune.param_groups
    assert latent_group["params"] == [module.latent] and latent_group["lr"] == 1e-5
    assert all(parameter is not module.latent for parameter in generator_group["params"])
    assert len(generator_group["params"]) == len(list(module.G.parameters())) and generator_group["lr"] == 1e-3
    lrs = []
    for _ in range(4):
        lrs.append([group["lr"] for group in tune.param_groups])
        scheduler.step()
    assert lrs[0] == lrs[1] == lrs[2] == [1e-3, 1e-5]  # constant until the last half's cosine ramp-down
    assert lrs[3] == pytest.approx([5e-4, 5e-6])  # half-way down it
    frozen = fast_module(pseudo_multiview__freeze_latent=True, pseudo_multiview__latent_lr=1e-5)
    (only_group,) = frozen.configure_optimizers()[0][-1].param_groups  # a frozen latent has no lr
    assert all(parameter is not frozen.latent for parameter in only_group["params"])
