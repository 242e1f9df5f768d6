"""IBRNet (Wang et al., CVPR 2021) inference for the 3D-consistency metric, in plain PyTorch.

The metric renders a few views of an inverted face, asks IBRNet to re-synthesise the input
view from them, and scores the prediction against the input (docs/method.md §9). This module holds the
networks, loads the authors' released ``model_255000.pth`` by key name, and renders one target
view from source views. It does not import IBRNet's code.

Released model (googleinterns/IBRNet, ``ibrnet/model.py`` and ``config.py`` defaults that the
pretraining and evaluation configs keep):

* The checkpoint is ``{"optimizer", "scheduler", "net_coarse", "feature_net", "net_fine"}``;
  the networks are plain state dicts (``de_parallel`` strips DDP's ``module.`` prefix).
* Two separate ray networks, ``net_coarse`` and ``net_fine`` (``coarse_only`` is off), each
  reading 32-channel features; ``anti_alias_pooling`` is on, so each holds a scalar ``s``.
* ``feature_net`` is a ResUNet (the first three stages of a ResNet-34 with InstanceNorm
  layers that keep no running statistics) emitting 32 coarse + 32 fine channels at 1/4
  resolution from images in ``[0, 1]``.
* Evaluation draws 64 coarse samples uniformly in inverse depth (``inv_uniform = True``),
  then 64 deterministic importance samples (``det=True``) for the fine network, on 128 sorted
  depths; no white background.

Convention:
    IBRNet describes a camera by a 34-vector ``[H, W, K (4×4), cam2world (4×4)]`` (row-major)
    with OpenCV axes (x right, y down, z forward) like EG3D, and *pixel-unit* intrinsics in
    which pixel ``(col, row)`` has its centre at the integer coordinates ``(col, row)``: target
    rays pass through integer pixel coordinates, sources are read with
    ``grid_sample(align_corners=True)`` after dividing by ``W − 1``/``H − 1``, and a
    projection is in bounds on ``[0, W − 1] × [0, H − 1]``. EG3D's normalized intrinsics put
    that centre at ``((col + 0.5) / W, (row + 0.5) / H)``, so :func:`ibrnet_cameras` scales
    by the image size and subtracts half a pixel from the principal point (IBRNet's own data
    loaders skip that half pixel; here it is applied so the geometry is exact).
    Depths along a target ray are camera-space ``z`` (ray directions have ``z_cam = 1``),
    not distances along unit rays. Images here are ``N×3×H×W`` in ``[-1, 1]``; IBRNet reads
    ``[0, 1]``.
"""

from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hfgi3d.cameras import split_c25

IBRNET_CHECKPOINT_NAME = "model_255000.pth"
"""File name of IBRNet's released pretrained model."""
IBRNET_DOWNLOAD_HINT = (
    f"it is IBRNet's released pretrained model `{IBRNET_CHECKPOINT_NAME}`: follow the 'Evaluation' section "
    "of the README at https://github.com/googleinterns/IBRNet (the pretrained-model link: "
    "`gdown https://drive.google.com/uc?id=165Et85R8YnL-5NcehG0fzqsnAUN8uxUJ && unzip pretrained_model.zip` "
    f"gives pretrained/{IBRNET_CHECKPOINT_NAME}), then pass its path as the config entry "
    "`evaluation.metrics.ibrnet_checkpoint`"
)
CHECKPOINT_NETWORKS = ("feature_net", "net_coarse", "net_fine")
"""Top-level checkpoint keys that hold state dicts; ``net_fine`` is absent from coarse-only models."""

COARSE_FEAT_DIM = 32
"""Feature channels read by ``net_coarse`` (IBRNet's ``coarse_feat_dim``)."""
FINE_FEAT_DIM = 32
"""Feature channels read by ``net_fine`` (IBRNet's ``fine_feat_dim``)."""
N_SAMPLES = 64
"""Coarse samples per ray in the released configs (``N_samples``)."""
N_IMPORTANCE = 64
"""Extra importance samples per ray for the fine network (``N_importance``)."""
DEFAULT_CHUNK_RAYS = 1024
"""Rays per chunk: 1024 rays × 128 samples × 5 views keeps peak memory near 1 GB."""
IBRNET_CAMERA_DIM = 34
"""Length of IBRNet's camera vector ``[H, W, K (16), cam2world (16)]``."""
FEATURE_STRIDE = 4
"""The ResUNet's feature maps are this many times smaller than its input."""

RGB_CHANNELS = 3
RAY_DIFF_CHANNELS = 4  # unit direction difference (3) + cosine between the two rays (1)
MIN_VIEWS_PER_SAMPLE = 2  # IBRNet: a sample counts for the ray mask when more than one view sees it
MIN_SAMPLES_PER_RAY = 9  # IBRNet: a ray is valid when more than 8 of its samples count

# ResNet-34's first three stages (IBRNet drops the fourth): blocks and widths
_STAGE_BLOCKS = (3, 4, 6)
_STAGE_WIDTHS = (64, 128, 256)
_STEM_WIDTH = 64
_STEM_KERNEL = 7
_DECODER_WIDTHS = (128, 64)  # channels after upconv3 / upconv2
_UPSAMPLE = 2

# ray network widths (IBRNet's mlp_network.py)
_DIR_HIDDEN = 16
_BASE_HIDDEN, _BASE_OUT = 64, 32
_GEOMETRY_HIDDEN, _GEOMETRY_OUT = 64, 16
_ATTENTION_HEADS, _ATTENTION_HEAD_DIM = 4, 4
_RGB_HIDDEN = (16, 8)
_ANTI_ALIAS_S_INIT = 0.2  # initial sharpness of the view-pooling weights (learned; the file overrides it)
_POSENC_BASE = 10000.0  # transformer-style sinusoid base of the per-sample position code

_NORM_EPS = 1e-6  # LayerNorm epsilon of the ray attention
_WEIGHT_EPS = 1e-8  # keeps normalised view weights finite when no view sees a sample
_MASKED_LOGIT = -1e9  # logit given to masked entries before a softmax
_DIRECTION_EPS = 1e-6  # guards unit-vector normalisation of rays
_MIN_PROJECTED_Z = 1e-8  # divisor floor of the perspective division
_PIXEL_LIMIT = 1e6  # projections are clamped to ±this many pixels so far-off points stay finite
_PDF_EPS = 1e-5  # added to coarse weights so empty rays still get a proper pdf
_CDF_STEP_MIN = 1e-5  # cdf steps below this are treated as 1 when inverting the cdf
_TRANSMITTANCE_EPS = 1e-10  # keeps the cumulative transmittance from collapsing to exactly 0


# --------------------------------------------------------------------------------------------
# Feature network
# --------------------------------------------------------------------------------------------


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    """IBRNet's normalisation: per-image statistics with a learned affine, no running stats."""
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, padding_mode="reflect")


class _ResidualBlock(nn.Module):
    """ResNet ``BasicBlock`` (two 3×3 convolutions) with InstanceNorm and reflection padding."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = _instance_norm(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = _instance_norm(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _instance_norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + shortcut)


class _ConvNormELU(nn.Module):
    """Decoder convolution (with bias, reflection padding) → InstanceNorm → ELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, padding_mode="reflect"
        )
        self.bn = _instance_norm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.bn(self.conv(x)))


class _UpConv(nn.Module):
    """×2 bilinear upsampling (``align_corners=True``, as IBRNet) followed by a decoder conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _ConvNormELU(in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=_UPSAMPLE, mode="bilinear", align_corners=True))


def _pad_to(x: Tensor, like: Tensor) -> Tensor:
    """Zero-pad ``x`` (centred, extra pixel at the end) to ``like``'s spatial size (never smaller)."""
    dy, dx = like.shape[-2] - x.shape[-2], like.shape[-1] - x.shape[-1]
    return F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))


class ResUNet(nn.Module):
    """IBRNet's image encoder: a 3-stage ResNet-34 encoder with a 2-level U-Net decoder.

    Convention:
        Input ``V×3×H×W`` images in ``[0, 1]``. Four stride-2 stages give a ``⌈H/16⌉×⌈W/16⌉``
        bottleneck that two ×2 upsamplings bring to ``4⌈H/16⌉×4⌈W/16⌉`` (``H/4×W/4`` when the
        size is a multiple of 16); as in IBRNet the skip features are zero-padded up to the
        upsampled size and concatenated *after* the upsampled ones. Parameter names follow
        IBRNet's ``feature_network.py`` so its state dict loads by key.
    """

    def __init__(
        self, coarse_out_ch: int = COARSE_FEAT_DIM, fine_out_ch: int = FINE_FEAT_DIM, coarse_only: bool = False
    ) -> None:
        super().__init__()
        self.coarse_out_ch = coarse_out_ch
        self.fine_out_ch = 0 if coarse_only else fine_out_ch
        out_ch = self.coarse_out_ch + self.fine_out_ch
        self.conv1 = nn.Conv2d(
            RGB_CHANNELS,
            _STEM_WIDTH,
            _STEM_KERNEL,
            stride=2,
            padding=_STEM_KERNEL // 2,
            bias=False,
            padding_mode="reflect",
        )
        self.bn1 = _instance_norm(_STEM_WIDTH)
        in_channels = _STEM_WIDTH
        stages = []
        for blocks, width in zip(_STAGE_BLOCKS, _STAGE_WIDTHS, strict=True):
            # every stage, the first included, halves the resolution in its first block
            stage = [_ResidualBlock(in_channels, width, stride=2)]
            stage += [_ResidualBlock(width, width, stride=1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.upconv3 = _UpConv(_STAGE_WIDTHS[2], _DECODER_WIDTHS[0])
        self.iconv3 = _ConvNormELU(_STAGE_WIDTHS[1] + _DECODER_WIDTHS[0], _DECODER_WIDTHS[0], 3)
        self.upconv2 = _UpConv(_DECODER_WIDTHS[0], _DECODER_WIDTHS[1])
        self.iconv2 = _ConvNormELU(_STAGE_WIDTHS[0] + _DECODER_WIDTHS[1], out_ch, 3)
        self.out_conv = nn.Conv2d(out_ch, out_ch, 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``V×3×H×W`` images in ``[0, 1]`` → (coarse ``V×Cc×h×w``, fine ``V×Cf×h×w`` or ``None``), ``h ≈ H/4``."""
        x = F.relu(self.bn1(self.conv1(images)))  # V×64×H/2×W/2
        skip1 = self.layer1(x)  # V×64×H/4×W/4
        skip2 = self.layer2(skip1)  # V×128×H/8×W/8
        x = self.layer3(skip2)  # V×256×H/16×W/16
        x = self.upconv3(x)  # V×128×H/8×W/8 (≥ skip2's size)
        x = self.iconv3(torch.cat((x, _pad_to(skip2, x)), dim=1))
        x = self.upconv2(x)  # V×64×H/4×W/4 (≥ skip1's size)
        x = self.iconv2(torch.cat((x, _pad_to(skip1, x)), dim=1))
        features = self.out_conv(x)  # V×(Cc+Cf)×H/4×W/4
        if self.fine_out_ch == 0:
            return features, None
        return features[:, : self.coarse_out_ch], features[:, -self.fine_out_ch :]


# --------------------------------------------------------------------------------------------
# Ray network
# --------------------------------------------------------------------------------------------


def _mlp(*widths: int, last: nn.Module | None) -> nn.Sequential:
    """Linear layers with ELU between them and ``last`` (or nothing) after the final one.

    The activations sit at odd indices so parameter names are ``0``, ``2``, ``4``… as in IBRNet.
    """
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2:
            layers.append(nn.ELU())
        elif last is not None:
            layers.append(last)
    return nn.Sequential(*layers)


def _weighted_mean_var(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance over the view axis (2) under per-view weights that sum to ≤ 1."""
    mean = (x * weight).sum(dim=2, keepdim=True)
    var = (weight * (x - mean).square()).sum(dim=2, keepdim=True)
    return mean, var


def sample_position_encoding(n_samples: int, dim: int, device: torch.device | str = "cpu") -> Tensor:
    """``1×S×D`` sinusoidal code of the sample index along a ray (not stored in the checkpoint).

    Channel ``j`` uses frequency ``base^(-2⌊j/2⌋/D)``; even channels hold the sine, odd ones
    the cosine. IBRNet builds the table for exactly ``N_samples`` (coarse) or
    ``N_samples + N_importance`` (fine) samples; here it follows the actual sample count.
    """
    position = torch.arange(n_samples, dtype=torch.float64)[:, None]  # S×1
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim  # D
    angle = position / _POSENC_BASE**exponent  # S×D
    code = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return code.float().to(device)[None]


class _RayAttention(nn.Module):
    """Multi-head self-attention along a ray's samples, residual + LayerNorm (IBRNet's ray transformer)."""

    def __init__(self, heads: int, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.w_qs = nn.Linear(dim, heads * head_dim, bias=False)
        self.w_ks = nn.Linear(dim, heads * head_dim, bias=False)
        self.w_vs = nn.Linear(dim, heads * head_dim, bias=False)
        self.fc = nn.Linear(heads * head_dim, dim, bias=False)
        self.layer_norm = nn.LayerNorm(dim, eps=_NORM_EPS)

    def forward(self, x: Tensor, query_valid: Tensor) -> Tensor:
        """``R×S×D`` tokens and ``R×S×1`` bool → ``R×S×D``.

        As in IBRNet, the mask applies to *queries*: an invalid sample's whole attention row is
        set to one constant logit, so it attends uniformly to every sample of its ray.
        """
        rays, samples, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(rays, samples, self.heads, self.head_dim).transpose(1, 2)  # R×h×S×d

        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        logits = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)  # R×h×S×S
        logits = logits.masked_fill(~query_valid[:, None], _MASKED_LOGIT)
        mixed = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(rays, samples, -1)  # R×S×h·d
        return self.layer_norm(self.fc(mixed) + x)


class IBRNetMLP(nn.Module):
    """IBRNet's per-ray network (``net_coarse`` / ``net_fine``): view pooling, ray transformer, blending.

    Convention:
        Inputs are per ray, per sample, per source view: ``rgb_feat`` ``R×S×V×(3+C)`` (source
        colour in ``[0, 1]`` then features), ``ray_diff`` ``R×S×V×4`` (see
        :func:`view_direction_difference`) and ``mask`` ``R×S×V×1`` (1 where the sample projects
        inside the source image, in front of it). The output ``R×S×4`` holds the colour — a
        convex combination of the source colours of the views that see the sample — and a
        density ``σ ≥ 0`` that is 0 where no view sees the sample.
    """

    def __init__(self, in_feat_ch: int = COARSE_FEAT_DIM, anti_alias_pooling: bool = True) -> None:
        super().__init__()
        self.s: nn.Parameter | None = None
        if anti_alias_pooling:
            self.s = nn.Parameter(torch.tensor(_ANTI_ALIAS_S_INIT))
        token = in_feat_ch + RGB_CHANNELS
        self.ray_dir_fc = _mlp(RAY_DIFF_CHANNELS, _DIR_HIDDEN, token, last=nn.ELU())
        self.base_fc = _mlp(3 * token, _BASE_HIDDEN, _BASE_OUT, last=nn.ELU())  # [mean, var, own] per view
        self.vis_fc = _mlp(_BASE_OUT, _BASE_OUT, _BASE_OUT + 1, last=nn.ELU())  # residual + visibility logit
        self.vis_fc2 = _mlp(_BASE_OUT, _BASE_OUT, 1, last=nn.Sigmoid())
        self.geometry_fc = _mlp(2 * _BASE_OUT + 1, _GEOMETRY_HIDDEN, _GEOMETRY_OUT, last=nn.ELU())
        self.ray_attention = _RayAttention(_ATTENTION_HEADS, _GEOMETRY_OUT, _ATTENTION_HEAD_DIM)
        self.out_geometry_fc = _mlp(_GEOMETRY_OUT, _GEOMETRY_OUT, 1, last=nn.ReLU())
        self.rgb_fc = _mlp(_BASE_OUT + 1 + RAY_DIFF_CHANNELS, *_RGB_HIDDEN, 1, last=None)

    def _pooling_weights(self, ray_diff: Tensor, mask: Tensor) -> Tensor:
        """``R×S×V×1`` view weights summing to 1 over visible views (0 when none sees the sample).

        With anti-alias pooling, views whose ray is closer to the target ray weigh more:
        ``exp(|s|(cos − 1))`` shifted so the farthest view gets 0.
        """
        if self.s is None:
            return mask / (mask.sum(dim=2, keepdim=True) + _WEIGHT_EPS)
        closeness = torch.exp(self.s.abs() * (ray_diff[..., 3:] - 1))
        weight = (closeness - closeness.amin(dim=2, keepdim=True)) * mask
        return weight / (weight.sum(dim=2, keepdim=True) + _WEIGHT_EPS)

    def forward(self, rgb_feat: Tensor, ray_diff: Tensor, mask: Tensor) -> Tensor:
        """See the class docstring: ``R×S×V×(3+C)``, ``R×S×V×4``, ``R×S×V×1`` → ``R×S×4`` (rgb, σ)."""
        views = rgb_feat.shape[2]
        source_rgb = rgb_feat[..., :RGB_CHANNELS]
        tokens = rgb_feat + self.ray_dir_fc(ray_diff)  # R×S×V×(3+C)
        weight = self._pooling_weights(ray_diff, mask)
        mean, var = _weighted_mean_var(tokens, weight)  # R×S×1×(3+C) each
        pooled = torch.cat((mean, var), dim=-1).expand(-1, -1, views, -1)
        x = self.base_fc(torch.cat((pooled, tokens), dim=-1))  # R×S×V×32

        residual, visibility = self.vis_fc(x * weight).split([_BASE_OUT, 1], dim=-1)
        x = x + residual
        visibility = self.vis_fc2(x * (torch.sigmoid(visibility) * mask)) * mask  # R×S×V×1
        weight = visibility / (visibility.sum(dim=2, keepdim=True) + _WEIGHT_EPS)

        mean, var = _weighted_mean_var(x, weight)
        geometry = torch.cat((mean.squeeze(2), var.squeeze(2), weight.mean(dim=2)), dim=-1)  # R×S×65
        geometry = self.geometry_fc(geometry)  # R×S×16
        geometry = geometry + sample_position_encoding(geometry.shape[1], geometry.shape[2], geometry.device)
        seen_by = mask.sum(dim=2)  # R×S×1
        geometry = self.ray_attention(geometry, seen_by >= MIN_VIEWS_PER_SAMPLE)
        sigma = self.out_geometry_fc(geometry).masked_fill(seen_by < 1, 0.0)  # R×S×1

        blend_logits = self.rgb_fc(torch.cat((x, visibility, ray_diff), dim=-1))  # R×S×V×1
        blend = blend_logits.masked_fill(mask == 0, _MASKED_LOGIT).softmax(dim=2)
        rgb = (source_rgb * blend).sum(dim=2)  # R×S×3
        return torch.cat((rgb, sigma), dim=-1)


class IBRNet(nn.Module):
    """The released model's three networks, named as the checkpoint's top-level keys."""

    def __init__(
        self,
        coarse_feat_dim: int = COARSE_FEAT_DIM,
        fine_feat_dim: int = FINE_FEAT_DIM,
        with_fine: bool = True,
        anti_alias_pooling: bool = True,
    ) -> None:
        super().__init__()
        self.feature_net = ResUNet(coarse_feat_dim, fine_feat_dim, coarse_only=not with_fine)
        self.net_coarse = IBRNetMLP(coarse_feat_dim, anti_alias_pooling)
        self.net_fine: IBRNetMLP | None = IBRNetMLP(fine_feat_dim, anti_alias_pooling) if with_fine else None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_LISTED_KEYS = 5  # how many offending keys an error message names


def _state_dict_problems(module: nn.Module, state: Mapping[str, Tensor], name: str) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` for ``module``, a few of each named."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} (expected {expected[k]})"
        for k in expected
        if k in state and (not isinstance(state[k], Tensor) or tuple(state[k].shape) != expected[k])
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshaped)):
        if keys:
            more = f" and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
            problems.append(f"{name}: {len(keys)} {label} key(s): {', '.join(keys[:_LISTED_KEYS])}{more}")
    return problems


def _feature_dim(state: Mapping[str, Tensor], default: int) -> int:
    """Feature channels a ray network reads, from its direction MLP's output width (``C + 3``)."""
    weight = state.get("ray_dir_fc.2.weight")
    return default if not isinstance(weight, Tensor) else int(weight.shape[0]) - RGB_CHANNELS


def load_ibrnet(path: str | Path, device: str | torch.device = "cpu") -> IBRNet:
    """Load IBRNet's released checkpoint (``model_255000.pth``) by key name, in eval mode.

    The file is read with ``torch.load(weights_only=True)``: its optimizer (Adam) and scheduler
    (StepLR) entries are plain dicts of numbers and tensors, so no code runs; they are ignored.
    Whether a fine network, anti-alias pooling and which feature widths are used is read off
    the file (``net_fine`` present, ``s`` present, ``ray_dir_fc.2.weight`` shape); every state
    dict must then match exactly (``strict=True``).

    Raises:
        FileNotFoundError: ``path`` is not a file (the message says where to get it).
        ValueError: the file is not a readable checkpoint, or keys are missing/unexpected/mis-shaped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IBRNet checkpoint not found: {path}; {IBRNET_DOWNLOAD_HINT}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path} is not a readable IBRNet checkpoint ({error}); {IBRNET_DOWNLOAD_HINT}") from error
    required = CHECKPOINT_NETWORKS[:2]
    if not isinstance(payload, Mapping) or any(not isinstance(payload.get(k), Mapping) for k in required):
        found = sorted(payload) if isinstance(payload, Mapping) else type(payload).__name__
        raise ValueError(f"{path}: expected top-level state dicts {list(required)} (+ 'net_fine'), found {found}")
    coarse_state = payload["net_coarse"]
    fine_state = payload.get("net_fine")
    model = IBRNet(
        coarse_feat_dim=_feature_dim(coarse_state, COARSE_FEAT_DIM),
        fine_feat_dim=_feature_dim(fine_state, FINE_FEAT_DIM) if isinstance(fine_state, Mapping) else FINE_FEAT_DIM,
        with_fine=isinstance(fine_state, Mapping),
        anti_alias_pooling="s" in coarse_state,
    )
    modules = {name: getattr(model, name) for name in CHECKPOINT_NETWORKS if getattr(model, name) is not None}
    problems = [p for name, module in modules.items() for p in _state_dict_problems(module, payload[name], name)]
    if problems:
        raise ValueError(
            f"{path} does not match IBRNet's released architecture ({'; '.join(problems)}); "
            f"expected the state dicts of {IBRNET_CHECKPOINT_NAME}"
        )
    for name, module in modules.items():
        module.load_state_dict(payload[name], strict=True)
    return model.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------
# Cameras and projection
# --------------------------------------------------------------------------------------------


def ibrnet_cameras(c25: Tensor, height: int, width: int) -> Tensor:
    """EG3D ``N×25`` labels → IBRNet ``N×34`` cameras ``[H, W, K (4×4), cam2world (4×4)]`` (row-major).

    Convention:
        Both use OpenCV ``cam2world`` matrices, which are copied. Normalized intrinsics become
        pixel units with the pixel-centre shift: ``K_px = [[W, 0, −½], [0, H, −½], [0, 0, 1]] ·
        K_norm``, because EG3D puts pixel ``(col, row)``'s centre at normalized
        ``((col + ½)/W, (row + ½)/H)`` while IBRNet puts it at pixel coordinates ``(col, row)``.
        ``K`` is embedded in a 4×4 identity as IBRNet's loaders do.
    """
    cam2world, intrinsics = split_c25(c25)
    n = len(c25)
    to_pixels = torch.tensor(
        [[width, 0.0, -0.5], [0.0, height, -0.5], [0.0, 0.0, 1.0]], dtype=c25.dtype, device=c25.device
    )
    k4 = torch.eye(4, dtype=c25.dtype, device=c25.device).repeat(n, 1, 1)
    k4[:, :3, :3] = to_pixels @ intrinsics
    size = torch.tensor([height, width], dtype=c25.dtype, device=c25.device).expand(n, 2)
    return torch.cat((size, k4.reshape(n, 16), cam2world.reshape(n, 16)), dim=1)


def _unpack_cameras(cameras: Tensor) -> tuple[Tensor, Tensor]:
    """``N×34`` → (``N×4×4`` pixel-unit intrinsics, ``N×4×4`` cam2world)."""
    if cameras.ndim != 2 or cameras.shape[1] != IBRNET_CAMERA_DIM:
        raise ValueError(f"expected IBRNet cameras of shape N×34, got {tuple(cameras.shape)}")
    return cameras[:, 2:18].reshape(-1, 4, 4), cameras[:, 18:34].reshape(-1, 4, 4)


def target_rays(camera: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Rays through the pixel centres of a ``34`` camera, row-major: origins and directions, ``(H·W)×3``.

    Directions are *not* unit length: their camera-space ``z`` is 1, so a point at parameter
    ``t`` along the ray has camera depth ``t`` (IBRNet samples depths, not distances).
    """
    intrinsics, cam2world = _unpack_cameras(camera[None])
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=camera.dtype, device=camera.device),
        torch.arange(width, dtype=camera.dtype, device=camera.device),
        indexing="ij",
    )
    pixels = torch.stack((cols, rows, torch.ones_like(cols)), dim=-1).reshape(-1, 3)  # P×3, centres at integers
    directions_cam = pixels @ torch.linalg.inv(intrinsics[0, :3, :3]).T  # P×3, z_cam = 1
    directions = directions_cam @ cam2world[0, :3, :3].T
    return cam2world[0, :3, 3].expand_as(directions), directions


def project_to_views(points: Tensor, cameras: Tensor) -> tuple[Tensor, Tensor]:
    """Project ``P×3`` world points into ``V`` IBRNet cameras.

    Returns:
        ``V×P×2`` pixel coordinates ``(col, row)`` (centres at integers; clamped to ±1e6 so
        points near the camera plane stay finite) and ``V×P`` bool "in front of the camera".
    """
    intrinsics, cam2world = _unpack_cameras(cameras)
    world_to_pixels = intrinsics @ torch.linalg.inv(cam2world)  # V×4×4
    homogeneous = F.pad(points, (0, 1), value=1.0)  # P×4
    projected = torch.einsum("vij,pj->vpi", world_to_pixels, homogeneous)  # V×P×4
    depth = projected[..., 2:3]
    pixels = projected[..., :2] / depth.clamp(min=_MIN_PROJECTED_Z)
    return pixels.clamp(-_PIXEL_LIMIT, _PIXEL_LIMIT), depth[..., 0] > 0


def view_direction_difference(points: Tensor, target_camera: Tensor, source_cameras: Tensor) -> Tensor:
    """``V×P×4`` how each source sees a point compared with the target: unit difference + cosine.

    For each point, ``a`` is the unit vector to the target camera centre and ``b`` the one to a
    source camera centre; the result is ``[(a − b)/|a − b|, a·b]``.
    """

    def unit_to_centre(centres: Tensor) -> Tensor:  # centres V×3 → V×P×3
        offsets = centres[:, None] - points[None]
        return offsets / (torch.linalg.vector_norm(offsets, dim=-1, keepdim=True) + _DIRECTION_EPS)

    _, target_c2w = _unpack_cameras(target_camera[None])
    _, source_c2w = _unpack_cameras(source_cameras)
    to_target = unit_to_centre(target_c2w[:, :3, 3])  # 1×P×3
    to_source = unit_to_centre(source_c2w[:, :3, 3])  # V×P×3
    difference = to_target - to_source
    direction = difference / torch.linalg.vector_norm(difference, dim=-1, keepdim=True).clamp(min=_DIRECTION_EPS)
    cosine = (to_target * to_source).sum(dim=-1, keepdim=True)
    return torch.cat((direction, cosine), dim=-1)


def sample_source_views(
    points: Tensor, target_camera: Tensor, source_images: Tensor, source_cameras: Tensor, feature_maps: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Read every source view at the projections of ``R×S×3`` sample points (IBRNet's projector).

    Args:
        points: ``R×S×3`` world points.
        target_camera: ``34`` IBRNet camera of the target view.
        source_images: ``V×3×H×W`` in ``[0, 1]``.
        source_cameras: ``V×34``.
        feature_maps: ``V×C×h×w``, read with the same normalized coordinates as the images.

    Returns:
        ``rgb_feat`` ``R×S×V×(3+C)``, ``ray_diff`` ``R×S×V×4`` and ``mask`` ``R×S×V×1`` (float,
        1 where the projection is in front of the camera and within ``[0, W−1]×[0, H−1]``).
    """
    rays, samples = points.shape[:2]
    views, _, height, width = source_images.shape
    flat = points.reshape(-1, 3)  # P×3
    pixels, in_front = project_to_views(flat, source_cameras)  # V×P×2, V×P
    extent = torch.tensor([width - 1.0, height - 1.0], dtype=pixels.dtype, device=pixels.device)
    grid = (2 * pixels / extent - 1)[:, None]  # V×1×P×2, align_corners=True: ±1 at the edge pixel centres
    colours = F.grid_sample(source_images, grid, align_corners=True)  # V×3×1×P
    features = F.grid_sample(feature_maps, grid, align_corners=True)  # V×C×1×P
    rgb_feat = torch.cat((colours, features), dim=1)[:, :, 0].permute(2, 0, 1)  # P×V×(3+C)
    inside = (pixels >= 0).all(dim=-1) & (pixels <= extent).all(dim=-1) & in_front  # V×P
    ray_diff = view_direction_difference(flat, target_camera, source_cameras).transpose(0, 1)  # P×V×4
    return (
        rgb_feat.reshape(rays, samples, views, -1),
        ray_diff.reshape(rays, samples, views, RAY_DIFF_CHANNELS),
        inside.T.reshape(rays, samples, views, 1).to(points.dtype),
    )


# --------------------------------------------------------------------------------------------
# Sampling and compositing
# --------------------------------------------------------------------------------------------


def inverse_depth_samples(near: float, far: float, n_samples: int, rays: int, device: torch.device | str) -> Tensor:
    """``R×S`` depths evenly spaced in inverse depth from ``near`` to ``far`` (both included)."""
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    inverse = torch.linspace(1.0 / near, 1.0 / far, n_samples, device=device)
    return (1.0 / inverse).expand(rays, n_samples)


def sample_pdf(bins: Tensor, weights: Tensor, n_samples: int) -> Tensor:
    """Deterministic inverse-cdf sampling of a piecewise-constant pdf (IBRNet's ``sample_pdf``, ``det=True``).

    Args:
        bins: ``R×(M+1)`` increasing bin edges.
        weights: ``R×M`` non-negative bin weights (a small constant is added so empty rays work).
        n_samples: ``N``; the quantiles are ``linspace(0, 1, N)``.

    Returns:
        ``R×N`` samples, linear inside each bin.
    """
    weights = weights + _PDF_EPS
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = F.pad(torch.cumsum(pdf, dim=-1), (1, 0))  # R×(M+1), starts at 0
    quantiles = torch.linspace(0.0, 1.0, n_samples, device=bins.device).expand(len(bins), n_samples).contiguous()
    # upper edge index = how many of the bins' lower cdf values are ≤ the quantile (≥ 1 since cdf[0] = 0)
    upper = torch.searchsorted(cdf[:, :-1].contiguous(), quantiles, right=True)  # R×N in [1, M]
    lower = (upper - 1).clamp(min=0)
    cdf_low, cdf_high = cdf.gather(1, lower), cdf.gather(1, upper)
    bin_low, bin_high = bins.gather(1, lower), bins.gather(1, upper)
    step = cdf_high - cdf_low
    step = torch.where(step < _CDF_STEP_MIN, torch.ones_like(step), step)
    return bin_low + (quantiles - cdf_low) / step * (bin_high - bin_low)


def importance_depths(depths: Tensor, weights: Tensor, n_importance: int) -> Tensor:
    """Coarse ``R×S`` depths + ``n_importance`` samples drawn from the coarse weights, sorted: ``R×(S+N)``.

    As IBRNet does for inverse-depth sampling, the pdf lives on inverse depth: bins are the
    midpoints between coarse inverse depths and the end samples' weights are dropped.
    """
    inverse = 1.0 / depths
    midpoints = 0.5 * (inverse[:, 1:] + inverse[:, :-1])  # R×(S−1), decreasing
    # flipped so bins increase; weights[:, 1:-1] belong to the bins between consecutive midpoints
    inverse_new = sample_pdf(midpoints.flip(1), weights[:, 1:-1].flip(1), n_importance)
    return torch.sort(torch.cat((depths, 1.0 / inverse_new), dim=-1), dim=-1).values


def composite(raw: Tensor, depths: Tensor) -> dict[str, Tensor]:
    """Alpha-composite ``R×S×4`` (rgb, σ) along rays at ``R×S`` depths.

    Convention:
        IBRNet ignores the sample spacing: ``α = 1 − exp(−σ)`` (σ is per sample, not per unit
        length), so the scene's scale does not matter. Returns ``rgb`` ``R×3`` (no background
        added, i.e. black), ``depth`` ``R``, ``acc`` ``R`` (sum of the weights) and ``weights`` ``R×S``.
    """
    alpha = 1.0 - torch.exp(-raw[..., 3])  # R×S
    transmittance = torch.cumprod(1.0 - alpha + _TRANSMITTANCE_EPS, dim=-1)
    transmittance = F.pad(transmittance[:, :-1], (1, 0), value=1.0)  # light reaching each sample
    weights = alpha * transmittance
    return {
        "rgb": (weights[..., None] * raw[..., :3]).sum(dim=1),
        "depth": (weights * depths).sum(dim=1),
        "acc": weights.sum(dim=1),
        "weights": weights,
    }


def _ray_mask(sample_mask: Tensor) -> Tensor:
    """``R×S×V×1`` → ``R`` bool: IBRNet's "enough samples seen by at least two views" flag."""
    well_seen = sample_mask[..., 0].sum(dim=2) >= MIN_VIEWS_PER_SAMPLE  # R×S
    return well_seen.sum(dim=1) >= MIN_SAMPLES_PER_RAY


@dataclass(frozen=True)
class _SourceViews:
    """The source views as IBRNet reads them, prepared once per target view."""

    images: Tensor  # V×3×H×W in [0, 1]
    cameras: Tensor  # V×34
    features: tuple[Tensor, Tensor | None]  # coarse V×Cc×h×w, fine V×Cf×h×w (None without a fine network)


def _check_render_inputs(src_images: Tensor, src_c25: Tensor, tgt_c25: Tensor) -> None:
    if src_images.ndim != 4 or src_images.shape[1] != RGB_CHANNELS or len(src_images) != len(src_c25):
        raise ValueError(
            f"expected V×3×H×W source images with V×25 labels, got {tuple(src_images.shape)} and {tuple(src_c25.shape)}"
        )
    if tgt_c25.shape != (1, 25):
        raise ValueError(f"expected one 1×25 target label, got {tuple(tgt_c25.shape)}")


def _prepare_sources(model: IBRNet, src_images: Tensor, src_c25: Tensor, device: torch.device) -> _SourceViews:
    """``V×3×H×W`` images in ``[-1, 1]`` and ``V×25`` labels → IBRNet's images, cameras and feature maps."""
    height, width = src_images.shape[-2:]
    images = ((src_images.to(device, torch.float32) + 1) / 2).clamp(0, 1)  # V×3×H×W in IBRNet's range
    cameras = ibrnet_cameras(src_c25.to(device, torch.float32), height, width)
    return _SourceViews(images, cameras, model.feature_net(images))


def _render_samples(
    net: IBRNetMLP,
    origins: Tensor,
    directions: Tensor,
    depths: Tensor,
    target_camera: Tensor,
    sources: _SourceViews,
    feature_maps: Tensor,
) -> dict[str, Tensor]:
    """One ray network at ``R×S`` depths along ``R`` rays: :func:`composite`'s outputs + the ray ``mask``."""
    points = origins[:, None] + depths[..., None] * directions[:, None]  # R×S×3
    rgb_feat, ray_diff, mask = sample_source_views(points, target_camera, sources.images, sources.cameras, feature_maps)
    out = composite(net(rgb_feat, ray_diff, mask), depths)
    out["mask"] = _ray_mask(mask)
    return out


def _render_chunk(
    model: IBRNet,
    origins: Tensor,
    directions: Tensor,
    target_camera: Tensor,
    sources: _SourceViews,
    near: float,
    far: float,
    n_samples: int,
    n_importance: int,
) -> dict[str, Tensor]:
    """Coarse (and fine) rendering of ``R`` rays; returns per-ray outputs of the last stage + ``rgb_coarse``."""
    coarse_features, fine_features = sources.features
    depths = inverse_depth_samples(near, far, n_samples, len(origins), origins.device)  # R×S
    coarse = _render_samples(model.net_coarse, origins, directions, depths, target_camera, sources, coarse_features)
    if model.net_fine is None or fine_features is None or n_importance == 0:
        return {**coarse, "rgb_coarse": coarse["rgb"]}
    depths = importance_depths(depths, coarse["weights"], n_importance)  # R×(S+N)
    fine = _render_samples(model.net_fine, origins, directions, depths, target_camera, sources, fine_features)
    return {**fine, "rgb_coarse": coarse["rgb"]}


_IMAGE_KEYS = ("rgb", "rgb_coarse", "acc", "depth", "mask")
"""Per-ray outputs of :func:`_render_chunk` that :func:`render_ibrnet` returns as images."""


def _assemble_images(chunks: list[dict[str, Tensor]], resolution: int) -> dict[str, Tensor]:
    """Row-major per-ray chunks (``R'×C`` or ``R'``) → ``1×C×R×R`` images, colours mapped to ``[-1, 1]``."""

    def image(key: str) -> Tensor:  # R²×C or R² → 1×C×R×R
        flat = torch.cat([chunk[key] for chunk in chunks]).reshape(resolution * resolution, -1)
        return flat.T.reshape(1, -1, resolution, resolution)

    return {
        "rgb": image("rgb").clamp(0, 1) * 2 - 1,
        "rgb_coarse": image("rgb_coarse").clamp(0, 1) * 2 - 1,
        "acc": image("acc"),
        "depth": image("depth"),
        "mask": image("mask"),
    }


@torch.no_grad()
def render_ibrnet(
    model: IBRNet,
    src_images: Tensor,
    src_c25: Tensor,
    tgt_c25: Tensor,
    resolution: int,
    near: float,
    far: float,
    n_samples: int = N_SAMPLES,
    n_importance: int = N_IMPORTANCE,
    chunk_rays: int = DEFAULT_CHUNK_RAYS,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Predict the ``R×R`` target view of one scene from ``V`` source views with IBRNet.

    Args:
        model: e.g. from :func:`load_ibrnet`; rendering runs on its device.
        src_images: ``V×3×H×W`` in ``[-1, 1]`` (clamped, then mapped to IBRNet's ``[0, 1]``).
        src_c25: ``V×25`` EG3D labels of the sources.
        tgt_c25: ``1×25`` label of the target.
        resolution: ``R``, the target's square size in pixels.
        near, far: depth range along the target camera's optical axis (camera ``z``, see
            :func:`target_rays`); for EG3D FFHQ pass the generator's ``ray_start``/``ray_end``
            (EG3D measures them along unit rays; at FFHQ's 18.8° field of view that differs
            from camera ``z`` by at most 1.4 %, at the image corners).
        n_samples, n_importance: coarse and extra fine samples per ray; the released networks
            were trained with 64 + 64 (their position code assumes those counts).
        chunk_rays: rays per chunk; lower it to save memory.
        progress: show a progress bar over chunks.

    Returns:
        ``rgb`` ``1×3×R×R`` in ``[-1, 1]`` (fine network when present, else coarse; rays that hit
        nothing are black, ``−1``), ``rgb_coarse`` ``1×3×R×R``, ``acc`` ``1×1×R×R`` (accumulated
        weight), ``depth`` ``1×1×R×R`` (camera ``z``, weighted by the weights, not normalised)
        and ``mask`` ``1×1×R×R`` bool (IBRNet's valid-ray flag: > 8 samples seen by ≥ 2 views).

    Convention:
        Deterministic: no depth jitter and fixed importance quantiles, as IBRNet's evaluation.
    """
    _check_render_inputs(src_images, src_c25, tgt_c25)
    device = next(model.parameters()).device
    sources = _prepare_sources(model, src_images, src_c25, device)
    target_camera = ibrnet_cameras(tgt_c25.to(device, torch.float32), resolution, resolution)[0]
    origins, directions = target_rays(target_camera, resolution, resolution)  # R²×3 each

    chunks = []
    starts = range(0, len(origins), chunk_rays)
    for start in tqdm(starts, desc="IBRNet", disable=not progress, leave=False):
        rays = slice(start, start + chunk_rays)
        out = _render_chunk(
            model, origins[rays], directions[rays], target_camera, sources, near, far, n_samples, n_importance
        )
        chunks.append({key: out[key] for key in _IMAGE_KEYS})  # drops the R'×S weights
    return _assemble_images(chunks, resolution)
