"""Test helper: write look-alikes of IBRNet's released checkpoint ``model_255000.pth``.

The real file (≈ 100 MB, Google Drive) cannot ship with the tests. The tables below were
written down from the official source (googleinterns/IBRNet, commit 70360f39) *without* using
:mod:`hfgi3d.metrics.ibrnet`, so comparing our modules' state dicts against them can fail.

Confirmed from the official source:

* ``ibrnet/model.py`` ``IBRNetModel.save_model``: the file is ``torch.save({"optimizer":
  Adam.state_dict(), "scheduler": StepLR.state_dict(), "net_coarse": …, "feature_net": …})``
  plus ``"net_fine"`` unless ``coarse_only``; ``de_parallel`` strips DDP's ``module.`` prefix.
  The optimizer has three parameter groups in the order net_coarse, net_fine, feature_net.
* ``config.py`` defaults kept by ``configs/pretrain.txt`` and ``configs/eval_*.txt``:
  ``coarse_feat_dim = fine_feat_dim = 32``, ``coarse_only`` off (so two ray networks),
  ``anti_alias_pooling = 1`` (so each ray network has a 0-dim parameter ``s``),
  ``N_samples = N_importance = 64``, ``lrate_mlp = 5e-4``, ``lrate_feature = 1e-3``,
  ``lrate_decay_steps = 50000``, ``lrate_decay_factor = 0.5``.
* ``ibrnet/mlp_network.py`` ``IBRNet``: the Linear layers and widths of :data:`MLP_KEY_SHAPES`
  (activations interleave, hence indices 0/2/4); ``MultiHeadAttention(4, 16, 4, 4)`` with
  bias-free ``w_qs/w_ks/w_vs/fc`` and ``layer_norm``; the position code is a plain tensor
  attribute, not a parameter or buffer, so it is not in the state dict.
* ``ibrnet/feature_network.py`` ``ResUNet``: ``conv1`` 7×7 (no bias), InstanceNorm2d with
  ``affine=True, track_running_stats=False`` everywhere (weight/bias, no running-stat buffers),
  ``layer1..3`` of ``BasicBlock`` ×(3, 4, 6) at widths (64, 128, 256), each stage strided by 2 so
  each first block has a ``downsample`` (1×1 conv, no bias + norm); decoder ``upconv3.conv``,
  ``iconv3``, ``upconv2.conv``, ``iconv2`` (conv with bias + norm named ``conv``/``bn``) and a 1×1
  ``out_conv`` with bias; ``layer4`` is never built.

Assumptions (not checkable without the file):

* The released file was saved by that ``save_model`` with the pretraining config (its
  evaluation script loads it into exactly these modules with strict loading, which supports
  this). PyTorch 1.5 (the README's version) wrote the legacy, non-zip format; both formats are
  written here on request.
* Optimizer internals follow PyTorch 1.5's Adam (``step`` an ``int``; ``betas`` a tuple) and
  StepLR state dicts; the values (lr after 255000 steps, etc.) are plausible, not known.
  Only the first few Adam state entries are written, to keep the test file small — the types,
  not the count, matter for ``weights_only`` loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINT_STEP = 255000
FEAT_DIM = 32

# (name, input width, output width) of every Linear in net_coarse / net_fine, for C = 32 features
# (C + 3 = 35 per-view token width), transcribed from mlp_network.IBRNet.__init__.
_MLP_LINEARS: tuple[tuple[str, int, int, bool], ...] = (
    ("ray_dir_fc.0", 4, 16, True),
    ("ray_dir_fc.2", 16, 35, True),
    ("base_fc.0", 105, 64, True),
    ("base_fc.2", 64, 32, True),
    ("vis_fc.0", 32, 32, True),
    ("vis_fc.2", 32, 33, True),
    ("vis_fc2.0", 32, 32, True),
    ("vis_fc2.2", 32, 1, True),
    ("geometry_fc.0", 65, 64, True),
    ("geometry_fc.2", 64, 16, True),
    ("ray_attention.w_qs", 16, 16, False),
    ("ray_attention.w_ks", 16, 16, False),
    ("ray_attention.w_vs", 16, 16, False),
    ("ray_attention.fc", 16, 16, False),
    ("out_geometry_fc.0", 16, 16, True),
    ("out_geometry_fc.2", 16, 1, True),
    ("rgb_fc.0", 37, 16, True),
    ("rgb_fc.2", 16, 8, True),
    ("rgb_fc.4", 8, 1, True),
)


def _mlp_key_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"s": ()}
    for name, fan_in, fan_out, bias in _MLP_LINEARS:
        shapes[f"{name}.weight"] = (fan_out, fan_in)
        if bias:
            shapes[f"{name}.bias"] = (fan_out,)
    shapes["ray_attention.layer_norm.weight"] = (16,)
    shapes["ray_attention.layer_norm.bias"] = (16,)
    return shapes


MLP_KEY_SHAPES = _mlp_key_shapes()
"""State dict of ``net_coarse`` (and ``net_fine``) of the released model: key → shape."""

# The stem and the first block literally, then the rest generated from the official stage spec.
RESUNET_FIRST_KEYS: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.bn1.bias": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn2.weight": (64,),
    "layer1.0.bn2.bias": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer1.0.downsample.1.weight": (64,),
    "layer1.0.downsample.1.bias": (64,),
}


def _resunet_key_shapes(out_channels: int = 2 * FEAT_DIM) -> dict[str, tuple[int, ...]]:
    shapes = {"conv1.weight": (64, 3, 7, 7), "bn1.weight": (64,), "bn1.bias": (64,)}
    in_ch = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256)), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, in_ch if block == 0 else width, 3, 3)
            shapes[f"{prefix}.bn1.weight"] = shapes[f"{prefix}.bn1.bias"] = (width,)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"{prefix}.bn2.weight"] = shapes[f"{prefix}.bn2.bias"] = (width,)
            if block == 0:  # stride 2 in every stage's first block
                shapes[f"{prefix}.downsample.0.weight"] = (width, in_ch, 1, 1)
                shapes[f"{prefix}.downsample.1.weight"] = shapes[f"{prefix}.downsample.1.bias"] = (width,)
        in_ch = width
    for name, c_in, c_out in (
        ("upconv3.conv", 256, 128),
        ("iconv3", 128 + 128, 128),
        ("upconv2.conv", 128, 64),
        ("iconv2", 64 + 64, out_channels),
    ):
        shapes[f"{name}.conv.weight"] = (c_out, c_in, 3, 3)
        shapes[f"{name}.conv.bias"] = (c_out,)
        shapes[f"{name}.bn.weight"] = shapes[f"{name}.bn.bias"] = (c_out,)
    shapes["out_conv.weight"] = (out_channels, out_channels, 1, 1)
    shapes["out_conv.bias"] = (out_channels,)
    return shapes


RESUNET_KEY_SHAPES = _resunet_key_shapes()
"""State dict of ``feature_net`` of the released model (32 coarse + 32 fine channels): key → shape."""

OFFICIAL_KEY_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "net_coarse": MLP_KEY_SHAPES,
    "net_fine": MLP_KEY_SHAPES,
    "feature_net": RESUNET_KEY_SHAPES,
}
TOP_LEVEL_KEYS = ("optimizer", "scheduler", "net_coarse", "feature_net", "net_fine")
"""Insertion order of ``save_model``'s dict (``net_fine`` is added last)."""


def _random_state(shapes: dict[str, tuple[int, ...]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {key: 0.1 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def _optimizer_state(networks: dict[str, dict[str, torch.Tensor]], state_entries: int) -> dict[str, Any]:
    """A PyTorch-1.5-style Adam state dict over groups (net_coarse, net_fine, feature_net)."""
    decay = 0.5 ** (CHECKPOINT_STEP // 50000)
    groups: list[dict[str, Any]] = []
    flat: list[torch.Tensor] = []
    for name, base_lr in (("net_coarse", 5e-4), ("net_fine", 5e-4), ("feature_net", 1e-3)):
        ids = list(range(len(flat), len(flat) + len(networks[name])))
        flat += list(networks[name].values())
        groups.append(
            {
                "lr": base_lr * decay,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0,
                "amsgrad": False,
                "initial_lr": base_lr,
                "params": ids,
            }
        )
    state = {
        i: {"step": CHECKPOINT_STEP, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        for i, p in enumerate(flat[:state_entries])
    }
    return {"state": state, "param_groups": groups}


def _scheduler_state() -> dict[str, Any]:
    base_lrs = [5e-4, 5e-4, 1e-3]
    decay = 0.5 ** (CHECKPOINT_STEP // 50000)
    return {
        "step_size": 50000,
        "gamma": 0.5,
        "base_lrs": base_lrs,
        "last_epoch": CHECKPOINT_STEP,
        "_step_count": CHECKPOINT_STEP + 1,
        "_get_lr_called_within_step": False,
        "_last_lr": [lr * decay for lr in base_lrs],
    }


def official_checkpoint(seed: int = 0, optimizer_state_entries: int = 4) -> dict[str, Any]:
    """The released checkpoint's structure with random network values (``0.1 · N(0, 1)``)."""
    generator = torch.Generator().manual_seed(seed)
    networks = {name: _random_state(OFFICIAL_KEY_SHAPES[name], generator) for name in ("net_coarse", "feature_net")}
    networks["net_fine"] = _random_state(OFFICIAL_KEY_SHAPES["net_fine"], generator)
    return {
        "optimizer": _optimizer_state(networks, optimizer_state_entries),
        "scheduler": _scheduler_state(),
        "net_coarse": networks["net_coarse"],
        "feature_net": networks["feature_net"],
        "net_fine": networks["net_fine"],
    }


def write_official_checkpoint(path: str | Path, seed: int = 0, legacy_format: bool = False) -> dict[str, Any]:
    """Write :func:`official_checkpoint` with ``torch.save`` (legacy non-zip format on request); return it."""
    payload = official_checkpoint(seed)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    return payload
