"""Access to the official EG3D reference data in ``tests/data/eg3d_reference`` (see its README).

The weights are not stored: each manifest gives a per-tensor rule (seeded ``randn`` × std,
or fixed values) that rebuilds the official state dict bit for bit.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATA = Path(__file__).parent / "data" / "eg3d_reference"
VARIANTS = {"tiny": DATA / "tiny", "tiny_planes32": DATA / "tiny" / "planes32"}
RUNS = ("z0_c0", "z0_c1", "z1_c0", "z1_c1")
# The manifest's suggested starting tolerances (max abs) for a float32 CPU reimplementation.
TOLERANCES = {
    "ws": 1e-5, "planes": 5e-5, "feature_image": 5e-5, "image_raw": 5e-5, "weights_sum": 5e-5,
    "image_depth": 5e-4, "image": 2e-4, "probe": 5e-5, "rays": 1e-6,
}  # fmt: skip


@dataclass(frozen=True)
class Reference:
    name: str
    manifest: dict[str, Any]
    arrays: Any  # numpy NpzFile

    @property
    def plane_resolution(self) -> int:
        return int(self.manifest["architecture_facts"]["planes_shape_per_sample"][-1])

    @property
    def neural_rendering_resolution(self) -> int:
        return int(self.manifest["config"]["neural_rendering_resolution"])

    def z(self, run: str) -> torch.Tensor:
        return torch.from_numpy(self.arrays[f"z_seed{run[1]}"])

    def c(self, run: str) -> torch.Tensor:
        return torch.from_numpy(self.arrays[f"cam{run[-1]}_c"])

    def array(self, key: str) -> np.ndarray:
        return self.arrays[key]


@cache
def load_reference(variant: str) -> Reference:
    folder = VARIANTS[variant]
    manifest = json.loads((folder / "manifest.json").read_text())
    return Reference(variant, manifest, np.load(folder / "reference.npz"))


def rebuild_state_dict(reference: Reference) -> dict[str, torch.Tensor]:
    """The official state dict, rebuilt from the manifest's weight rule, in state-dict order."""
    state: dict[str, torch.Tensor] = {}
    for entry in reference.manifest["weights"]["tensors"]:
        shape = entry["shape"]
        if entry["rule"] == "randn":
            generator = torch.Generator().manual_seed(entry["crc32_seed"])
            assert entry["crc32_seed"] == zlib.crc32(entry["name"].encode("utf-8"))
            state[entry["name"]] = torch.randn(shape, generator=generator, dtype=torch.float32) * entry["std"]
        elif entry["rule"] == "fixed":
            state[entry["name"]] = torch.tensor(entry["fixed_values"], dtype=torch.float32).reshape(shape)
        else:
            raise ValueError(f"unknown weight rule {entry['rule']!r} for {entry['name']}")
    return state


def eg3d_init_kwargs(reference: Reference) -> tuple[dict[str, Any], dict[str, Any]]:
    """``TriPlaneGenerator`` init_kwargs and rendering_kwargs as EG3D's train.py builds them."""
    g_kwargs = reference.manifest["config"]["G_kwargs"]
    common = reference.manifest["config"]["common_kwargs"]
    init_kwargs = {
        "z_dim": g_kwargs["z_dim"], "c_dim": common["c_dim"], "w_dim": g_kwargs["w_dim"],
        "img_resolution": common["img_resolution"], "img_channels": common["img_channels"],
        "sr_num_fp16_res": g_kwargs["sr_num_fp16_res"], "mapping_kwargs": dict(g_kwargs["mapping_kwargs"]),
        "rendering_kwargs": dict(g_kwargs["rendering_kwargs"]), "sr_kwargs": dict(g_kwargs["sr_kwargs"]),
        "channel_base": g_kwargs["channel_base"], "channel_max": g_kwargs["channel_max"],
        "fused_modconv_default": g_kwargs["fused_modconv_default"], "num_fp16_res": g_kwargs["num_fp16_res"],
        "conv_clamp": g_kwargs["conv_clamp"],
    }  # fmt: skip
    return init_kwargs, dict(g_kwargs["rendering_kwargs"])


def ffhq512_keys() -> list[tuple[str, tuple[int, ...]]]:
    """The 177 (name, shape) entries of the released FFHQ-512 ``G_ema`` state dict, in order."""
    rows = []
    for line in (DATA / "ffhq512_g_ema_keys.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape, _dtype, _kind = line.split("\t")
        rows.append((name, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return rows
