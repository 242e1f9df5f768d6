"""The typed stage settings (hfgi3d/stages.py) and the objectives (hfgi3d/objectives.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hfgi3d import objectives
from hfgi3d.presets import load_preset
from hfgi3d.stages import CONFIG_GROUPS, FORMER_KEYS, LossConfig, stage_spans, total_steps, upgrade_model_config


def test_every_former_name_points_at_a_field_of_its_group() -> None:
    for former, current in FORMER_KEYS.items():
        group, field = current.split(".")
        assert field in {f.name for f in dataclasses.fields(CONFIG_GROUPS[group])}, former


def test_the_paper_preset_sets_every_field_of_every_group() -> None:
    model = load_preset("hfgi3d.yaml")["model"]
    for group, kind in CONFIG_GROUPS.items():
        assert set(model[group]) == {f.name for f in dataclasses.fields(kind)}, group
    assert not set(model) & set(FORMER_KEYS)


def test_a_former_config_is_upgraded_into_the_groups() -> None:
    model = {"generator": "tiny", "estimate_steps": 7, "lambda_lpips": 0.0, "refine_camera": True, "seed": 3}
    assert upgrade_model_config(model) == ["estimate_steps", "lambda_lpips", "refine_camera"]
    assert model == {"generator": "tiny", "seed": 3, "estimate": {"steps": 7}, "loss": {"lambda_lpips": 0.0},
                     "camera": {"refine": True}}  # fmt: skip
    assert upgrade_model_config(model) == []  # already current


def test_the_schedule_has_no_occluded_stage_without_pseudo_views() -> None:
    assert total_steps(10, 5, 20, True) == 35 and total_steps(10, 5, 20, False) == 30
    assert stage_spans((10, 0, 20)) == [("estimate", 0, 10), ("pseudo_multiview", 10, 30)]


def test_the_weighted_sum_weighs_each_term_by_its_name() -> None:
    weights = LossConfig(lambda_input=1.0, lambda_occluded=0.5, lambda_visible=2.0)
    terms = {"occluded": torch.tensor([2.0]), "visible": torch.tensor([3.0]), "input": torch.tensor([4.0])}
    assert objectives.weighted_sum(terms, weights).item() == 0.5 * 2 + 2 * 3 + 4
    with pytest.raises(KeyError, match="lambda_tattoo"):
        objectives.weighted_sum({"tattoo": torch.tensor([1.0])}, weights)


def test_reconstruction_weighs_its_two_terms() -> None:
    weights = LossConfig(lambda_l2=2.0, lambda_lpips=0.5)
    l2, lpips = torch.tensor([0.25, 1.0]), torch.tensor([0.5, 0.0])
    assert objectives.reconstruction(l2, lpips, weights).tolist() == [0.75, 2.0]
    assert objectives.reconstruction(l2, None, weights).tolist() == [0.5, 2.0]  # no VGG pass: the MSE alone
