"""Editing directions: every circulating file form loads, layer ranges, conditioning, bad files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hfgi3d.editing.directions import Direction, condition, load_direction, unit
from hfgi3d.errors import InputError

NUM_WS = 14


def _random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(512,), (1, 512), (NUM_WS, 512), (1, NUM_WS, 512)])
@pytest.mark.parametrize("form", ["pt", "npy", "torch-zip-named-npy", "pt-dict"])
def test_every_form_and_shape_loads_to_the_same_direction(tmp_path: Path, shape: tuple[int, ...], form: str) -> None:
    raw = _random(*shape)
    path = tmp_path / ("d.pt" if form.startswith("pt") else "d.npy")
    if form == "pt":
        torch.save(raw, path)
    elif form == "pt-dict":
        torch.save({"direction": raw, "metadata": {"attribute": "smile"}}, path)
    elif form == "npy":
        np.save(path, raw.numpy())
    else:  # torch.save under an .npy name, as some projects ship them
        with path.open("wb") as handle:
            torch.save(raw, handle)
    direction = load_direction(path)
    layers = 1 if len(shape) == 1 or shape[-2] == 1 else NUM_WS
    assert direction.vector.shape == (layers, 512)
    expected = raw.reshape(layers, 512)
    expected = expected / (expected.norm() / math.sqrt(layers))
    torch.testing.assert_close(direction.vector, expected)
    assert direction.per_layer(NUM_WS).shape == (NUM_WS, 512)
    if form == "pt-dict":
        assert direction.metadata == {"attribute": "smile"}


def test_a_repeated_w_direction_and_its_w_form_edit_alike() -> None:
    w = unit(_random(1, 512))
    ws = _random(2, NUM_WS, 512, seed=1)
    as_w = Direction(w).apply(ws, 1.5)
    as_w_plus = Direction(unit(w.expand(NUM_WS, -1).clone())).apply(ws, 1.5)
    torch.testing.assert_close(as_w, as_w_plus)
    torch.testing.assert_close((as_w - ws)[0, 3].norm(), torch.tensor(1.5))  # one unit step per layer, times 1.5


def test_strength_zero_is_the_latent_and_a_layer_range_edits_only_its_layers() -> None:
    ws = _random(1, NUM_WS, 512, seed=2)
    direction = Direction(unit(_random(1, 512)), layers=(2, 5))
    torch.testing.assert_close(direction.apply(ws, 0.0), ws, rtol=0, atol=0)
    moved = (direction.apply(ws, 3.0) - ws)[0].norm(dim=1)
    assert torch.all(moved[2:5] > 2.9) and torch.all(moved[:2] == 0) and torch.all(moved[5:] == 0)
    with pytest.raises(InputError, match="10 layers but the generator has 14"):
        Direction(unit(_random(10, 512))).per_layer(NUM_WS)
    with pytest.raises(InputError, match="layer range"):
        Direction(unit(_random(1, 512)), layers=(10, 20)).per_layer(NUM_WS)


def test_conditioning_removes_the_other_attribute_and_keeps_unit_length() -> None:
    smile, age, glasses = (
        Direction(unit(_random(1, 512, seed=s)), metadata={"attribute": a})
        for s, a in [(3, "smile"), (4, "age"), (5, "glasses")]
    )
    conditioned = condition(smile, age, glasses)
    v = conditioned.vector[0]
    assert abs(float(v @ age.vector[0])) < 1e-5 and abs(float(v @ glasses.vector[0])) < 1e-5
    torch.testing.assert_close(v.norm(), torch.tensor(1.0))
    assert float(v @ smile.vector[0]) > 0.9  # random 512-d directions are nearly orthogonal: little is removed
    assert conditioned.metadata["conditioned_on"] == ["age", "glasses"]
    # One condition: InterFaceGAN's d1 - (d1·d2) d2, renormalised.
    d1, d2 = smile.vector[0], age.vector[0]
    expected = d1 - (d1 @ d2) * d2
    torch.testing.assert_close(condition(smile, age).vector[0], expected / expected.norm())
    with pytest.raises(InputError, match="span"):
        condition(smile, smile)


def test_metadata_naming_another_generator_warns(tmp_path: Path) -> None:
    path = tmp_path / "smile.pt"
    torch.save(
        {"direction": _random(512), "metadata": {"generator": "ffhq512-128.pkl", "generator_sha256": "a" * 64}}, path
    )
    with pytest.warns(UserWarning, match="another generator"):
        load_direction(path, generator_sha256="b" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_direction(path, generator_sha256="a" * 64)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((3, 256), np.float32), "does not fit"),
        (np.zeros(512, np.int64), "floating-point"),
        (np.full(512, np.nan, np.float32), "NaN"),
        (np.zeros(512, np.float32), "zero length"),
    ],
)
def test_bad_direction_files_get_one_clear_error(tmp_path: Path, content: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(InputError, match=message) as caught:
        load_direction(path)
    assert "\n" not in str(caught.value)


def test_pickled_npy_and_missing_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"not a plain \.npy"):
        load_direction(path)
    with pytest.raises(InputError, match="no direction file"):
        load_direction(tmp_path / "missing.npy")
    torch.save({"weights": _random(512)}, tmp_path / "nodir.pt")
    with pytest.raises(InputError, match="without a 'direction'"):
        load_direction(tmp_path / "nodir.pt")
