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
from torch import Tensor

from hfgi3d.cameras import pixel_rays, split_c25
from hfgi3d.generator import TriPlaneGenerator
from hfgi3d.generator.renderer import render_rays, sample_from_planes

DATA = Path(__file__).parent / "data" / "eg3d_reference"
VARIANTS = {"tiny": DATA / "tiny", "tiny_planes32": DATA / "tiny" / "planes32"}
RUNS = ("z0_c0", "z0_c1", "z1_c0", "z1_c1")
MANIFEST_TOLERANCES = {
    "ws": 1e-5, "planes": 5e-5, "feature_image": 5e-5, "image_raw": 5e-5, "weights_sum": 5e-5,
    "image_depth": 5e-4, "image": 2e-4, "probe": 5e-5, "rays": 1e-6,
}  # fmt: skip
"""The manifests' "suggested starting tolerances" (max abs per element) for a float32 CPU reimplementation."""

MANIFEST_GROUP = {
    "planes_stride8": "planes", "planes_crop": "planes", "depths_fine": "image_depth",
    "probe_sampled_features": "probe", "probe_rgb": "probe", "probe_sigma": "probe",
    "ray_origins": "rays", "ray_directions": "rays",
}  # fmt: skip
"""Recorded tensors that share a manifest figure with another (the fine depths are depths)."""

E32_FACTOR = 3.0
"""Tolerance per element = max(manifest figure, 3·e32), with ``e32`` the float32 reference's own
rounding error (``float32_error.json``, ``python -m tests.float32_error``: max |reference − float64
evaluation of the same network|, a property of the reference, the same on every machine).
|ours − reference| ≤ |ours − exact| + |reference − exact| = e32' + e32, and e32', our own float32
error, has the size of e32 but its maximum over a tensor moves with the summation order: on this
machine's kernels emulating others (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE,
ONEDNN_MAX_CPU_ISA=SSE41, alone and together) |ours − reference| reached 2.5·e32, so e32' ≤ 2·e32.
The manifest's own figures lie below e32 for the image-like outputs of the 256² variant (image_raw:
5e-5 against e32 = 2.9e-4), which is why a machine with other kernels failed them."""


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


def tolerances(reference: Reference) -> dict[str, float]:
    """Max abs difference allowed per recorded tensor of ``reference`` (see :data:`E32_FACTOR`)."""
    e32 = json.loads((VARIANTS[reference.name] / "float32_error.json").read_text())["e32"]
    allowed = {
        name: max(MANIFEST_TOLERANCES[MANIFEST_GROUP.get(name, name)], E32_FACTOR * error)
        for name, error in e32.items()
        if name != "planes_chan_sum_f64"
    }
    # A channel sum adds N = R² plane values, each within the per-element plane tolerance of the
    # reference, so it is within N times that tolerance (whatever the signs of the N errors).
    plane_elements = reference.plane_resolution**2
    per_element = max(value for name, value in allowed.items() if name.startswith("planes"))
    allowed["planes_chan_sum_f64"] = plane_elements * per_element
    return allowed


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


PLANE_CROP_HALF = 8
"""The tiny variant stores the planes' central 16×16 crop (and every 8th pixel), not the whole planes."""


@torch.no_grad()
def forward_outputs(generator: TriPlaneGenerator, reference: Reference, run: str) -> dict[str, Tensor]:
    """Every tensor ``reference`` records for ``run``, computed by ``generator`` in its own dtype.

    Keys are the reference's array names without the ``{run}__`` prefix (``planes`` or
    ``planes_stride8`` + ``planes_crop``, ``planes_chan_sum_f64``, ``image``, ``depths_fine``, …).
    """
    dtype = generator.w_avg.dtype
    arrays = reference.arrays
    z, c = reference.z(run).to(dtype), reference.c(run).to(dtype)
    ws = generator.mapping(z, c, truncation_psi=1.0)
    planes = generator.planes(ws, noise_mode="const")
    out = generator.render(planes, ws, c, deterministic=True)
    probe_coords = torch.from_numpy(arrays["probe_coords"]).to(dtype)
    probe = generator.sample_mixed(probe_coords, torch.from_numpy(arrays["probe_dirs"]).to(dtype), ws)
    origins, directions = pixel_rays(*split_c25(c), reference.neural_rendering_resolution)
    fine = render_rays(planes, generator.decoder, origins, directions, generator.config.rendering, deterministic=True)
    outputs = {
        "ws": ws,
        "planes_chan_sum_f64": planes.double().sum(dim=(-1, -2)),
        "feature_image": out["image_feature"],
        "image_raw": out["image_raw"],
        "weights_sum": out["image_weights"],
        "image_depth": out["image_depth"],
        "image": out["image"],
        "depths_fine": fine["depths_fine"],
        "probe_sampled_features": sample_from_planes(planes, probe_coords, generator.config.rendering.box_warp),
        "probe_rgb": probe["rgb"],
        "probe_sigma": probe["sigma"],
    }
    if f"{run}__planes" in arrays:  # the planes32 variant stores the whole planes
        outputs["planes"] = planes
    else:
        mid = planes.shape[-1] // 2
        outputs["planes_stride8"] = planes[..., ::8, ::8]
        crop = slice(mid - PLANE_CROP_HALF, mid + PLANE_CROP_HALF)
        outputs["planes_crop"] = planes[..., crop, crop]
    return outputs


def ffhq512_keys() -> list[tuple[str, tuple[int, ...]]]:
    """The 177 (name, shape) entries of the released FFHQ-512 ``G_ema`` state dict, in order."""
    rows = []
    for line in (DATA / "ffhq512_g_ema_keys.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape, _dtype, _kind = line.split("\t")
        rows.append((name, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return rows
