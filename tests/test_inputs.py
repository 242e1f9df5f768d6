"""Reading the input photo and camera; the config presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hfgi3d.cameras import orbit_c25
from hfgi3d.cli import main
from hfgi3d.data.inputs import SAMPLE_CAMERA, SAMPLE_IMAGE, load_camera, load_image
from hfgi3d.inversion import learning_rate

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))


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
    with pytest.raises(ValueError, match="no camera for"):
        load_camera(None, "face.png")
    with pytest.raises(FileNotFoundError, match="camera file not found"):
        load_camera(tmp_path / "missing.json", "face.png")
    (tmp_path / "short.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="expected 25 finite numbers"):
        load_camera(tmp_path / "short.json", "face.png")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a.png", [0] * 25]]}))
    with pytest.raises(ValueError, match=r"no label for face\.png"):
        load_camera(tmp_path / "dataset.json", "face.png")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_camera(tmp_path / "bad.json", "face.png")


def test_image_loading(tmp_path: Path) -> None:
    image = load_image(SAMPLE_IMAGE, 128)
    assert image.shape == (1, 3, 128, 128) and -1 <= image.min() and image.max() <= 1
    torch.testing.assert_close(load_camera(SAMPLE_CAMERA, SAMPLE_IMAGE), orbit_c25(0.0, 0.0), atol=1e-6, rtol=0)
    Image.new("RGB", (64, 48)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=r"64×48.*square"):
        load_image(tmp_path / "wide.png", 128)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "text.png", 128)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png", 128)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180°: displayed with the white half on the right
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "rotated.jpg", 32)
    assert image[0, :, :, 24:].mean() > 0.9 and image[0, :, :, :8].mean() < -0.9


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_parse(preset: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", f"configs/{preset}.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "estimate_steps" in printed and "pseudo_views" in printed and "outputs" in printed


def test_learning_rate_schedule() -> None:
    assert learning_rate(10, 100, 0.01, 0.0, 0.0) == 0.01
    assert learning_rate(0, 100, 0.01, 0.05, 0.25) == 0.0  # warm-up starts at 0
    assert learning_rate(50, 100, 0.01, 0.05, 0.25) == pytest.approx(0.01)
    assert learning_rate(100, 100, 0.01, 0.05, 0.25) == pytest.approx(0.0, abs=1e-12)
    assert 0 < learning_rate(90, 100, 0.01, 0.05, 0.25) < 0.01
