"""The presets shipped with hfgi3d: ``configs/`` in the repository, ``hfgi3d.configs`` once installed.

Code never reads ``configs/`` by its path in the repository: an installed wheel has no repository.
:func:`load_preset` gives a preset's values as plain dicts, for code that builds the modules
without the ``fit`` command (benchmarks, tests); it applies the same :data:`LINKS` as ``fit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

LINKS = (
    ("model.loss.lpips_resize", "evaluation.metrics.lpips_resize"),
    ("model.loss.lpips_weights", "evaluation.metrics.lpips_weights_vgg"),
    ("data.pseudo_views.yaw_range_rad", "evaluation.metrics.novel_yaw_rad"),
    ("data.pseudo_views.pitch_range_rad", "evaluation.metrics.novel_pitch_rad"),
    ("data.pseudo_views.yaw_range_rad", "outputs.grid_yaw_rad"),
    ("data.pseudo_views.pitch_range_rad", "outputs.grid_pitch_rad"),
    ("data.pseudo_views.visibility_rel_tol", "evaluation.metrics.warp_rel_tol"),
    ("data.pseudo_views.grazing_cos", "evaluation.metrics.warp_grazing_cos"),
)
"""(source, target) config keys: one value used by two groups, set at the source only."""


def preset_path(name: str) -> Path:
    """The shipped preset ``name`` (e.g. ``hfgi3d.yaml``, ``ablation/no_occluded.yaml``, ``generator/tiny.yaml``)."""
    path = Path(str(files("hfgi3d.configs").joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no preset {name!r} in hfgi3d's configs ({path.parent})")
    return path


def load_preset(*names: str) -> dict[str, Any]:
    """The presets ``names`` merged in order (as ``fit --config a --config b``), links applied."""
    config: dict[str, Any] = {}
    for name in names:
        config = merged(config, yaml.safe_load(preset_path(name).read_text()) or {})
    for source, target in LINKS:
        put(config, target, get(config, source))
    return config


def get(config: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a nested config (``model.estimate.steps``); ``None`` where it is not set."""
    node: Any = config
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def put(config: dict[str, Any], dotted: str, value: Any) -> bool:
    """Set a dotted key of a nested config, making the groups it needs; ``False`` (nothing set) where
    the path runs into a value that is not a group (a list of callbacks, a class spec's argument)."""
    *groups, key = dotted.split(".")
    node = config
    for group in groups:
        child = node.setdefault(group, {})
        if not isinstance(child, dict):
            return False
        node = child
    node[key] = value
    return True


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on ``base`` (as ``--config base --config override``): mappings merge key by key,
    anything else (lists included) replaces."""
    result = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if both_mappings else value
    return result
