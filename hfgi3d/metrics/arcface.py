"""Identity similarity: ArcFace (insightface ``arcface_torch`` IResNet) and optionally FaceNet.

The identity metric of an inversion is the cosine similarity of face-recognition embeddings of
the input photo and a render: detect five landmarks (:mod:`hfgi3d.faces`), align both faces to
the ArcFace 112×112 template, embed, compare.

The ArcFace network is :class:`IResNet`, written to load insightface's released ``arcface_torch``
checkpoints (``backbone.pth``, a plain state dict; e.g. ``ms1mv3_arcface_r100_fp16``) by key
name with ``strict=True``; :func:`load_arcface` reads them with ``weights_only=True``. The
weights are not bundled: download them from the insightface ``arcface_torch`` model zoo
(``recognition/arcface_torch`` README) and pass the path through the config entry
``evaluation.metrics.arcface_checkpoint``.

Convention:
    Images are ``B×3×H×W`` in ``[-1, 1]``, RGB. That is exactly ArcFace's input: insightface's
    ``inference.py`` converts OpenCV's BGR to RGB and maps 8-bit values with
    ``(x / 255 − 0.5) / 0.5``. Aligned faces are ``B×3×112×112`` (:func:`hfgi3d.faces.align_arcface`).
    Embeddings are ``B×512`` and unit-length; similarities are cosines in ``[-1, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN, InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import get_torch_home
from torch import Tensor, nn

from hfgi3d.faces import ARCFACE_SIZE, align_arcface, detect_best_faces

ArcFaceArch = Literal["r50", "r100"]
ARCFACE_LAYERS: dict[str, tuple[int, int, int, int]] = {"r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
"""IBasicBlocks per stage (``layer1`` … ``layer4``) of insightface's ``iresnet50`` / ``iresnet100``."""
EMBEDDING_DIM = 512
"""Length of an ArcFace (and FaceNet) embedding."""

_STEM_CHANNELS = 64
_STAGE_CHANNELS = (64, 128, 256, 512)
_STAGE_STRIDE = 2  # every stage halves the resolution, in its first block: 112 → 56 → 28 → 14 → 7
_FINAL_SIDE = ARCFACE_SIZE // _STAGE_STRIDE ** len(_STAGE_CHANNELS)  # 7: `fc` reads 512·7·7 features
_BN_EPS = 1e-5  # every BatchNorm of arcface_torch's IResNet
_COUNTER_SUFFIX = ".num_batches_tracked"  # BatchNorm step counters: unused at inference
_KEYS_SHOWN = 8  # how many offending keys an error message lists

ARCFACE_CHECKPOINT_HELP = (
    "download an insightface arcface_torch backbone (e.g. ms1mv3_arcface_r100_fp16/backbone.pth, linked from "
    "the model zoo of github.com/deepinsight/insightface, recognition/arcface_torch/README.md) and pass its path "
    "as the config entry evaluation.metrics.arcface_checkpoint"
)

FACENET_VGGFACE2_FILE = "20180402-114759-vggface2.pt"
"""facenet-pytorch's ``InceptionResnetV1(pretrained='vggface2')`` weights, cached under ``<torch home>/checkpoints``."""
FACENET_VGGFACE2_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{FACENET_VGGFACE2_FILE}"
FACENET_SIZE = 160
"""Side of FaceNet's input: facenet-pytorch's MTCNN box crop, resized, no landmark alignment."""
_FACENET_CENTRE, _FACENET_SCALE = 127.5, 128.0  # facenet-pytorch's fixed_image_standardization: (x − 127.5) / 128
_HALF_RANGE_8BIT = 127.5  # [-1, 1] → 8-bit: x₂₅₅ = 127.5 · (x + 1)


# ----------------------------------------------------------------------------------------------
# IResNet (insightface arcface_torch); module names are those of the released state dicts.


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: ``BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN (+ shortcut)``.

    Unlike torchvision's ResNet, the stride sits on the *second* convolution and there is no
    activation after the sum.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = _batch_norm(in_channels)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = _batch_norm(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = _batch_norm(channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False), _batch_norm(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))  # B×C'×H'×W'
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """insightface's ArcFace backbone: ``B×3×112×112`` aligned faces in ``[-1, 1]`` → ``B×512`` (not normalised).

    ``state_dict()`` keys and shapes are those of arcface_torch's ``backbone.pth``. Inference only
    differs from arcface_torch in two ways that do not change the result: its ``dropout`` (``p = 0``
    in the released configs, parameter-free) is left out, and its ``fp16`` flag, which only wraps
    the convolutional trunk in CUDA autocast during training, is not reproduced (run under
    ``torch.autocast`` yourself to get the same).
    """

    def __init__(self, layers: Sequence[int], embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        if len(layers) != len(_STAGE_CHANNELS):
            raise ValueError(f"expected {len(_STAGE_CHANNELS)} block counts (one per stage), got {list(layers)}")
        self.conv1 = _conv3x3(3, _STEM_CHANNELS)
        self.bn1 = _batch_norm(_STEM_CHANNELS)
        self.prelu = nn.PReLU(_STEM_CHANNELS)
        in_channels = _STEM_CHANNELS
        stages = []
        for channels, blocks in zip(_STAGE_CHANNELS, layers, strict=True):
            stage = [IBasicBlock(in_channels, channels, stride=_STAGE_STRIDE)]
            stage += [IBasicBlock(channels, channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = _batch_norm(in_channels)
        self.fc = nn.Linear(in_channels * _FINAL_SIDE**2, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=_BN_EPS)

    def forward(self, faces: Tensor) -> Tensor:
        if faces.ndim != 4 or faces.shape[1:] != (3, ARCFACE_SIZE, ARCFACE_SIZE):
            raise ValueError(
                f"ArcFace takes B×3×{ARCFACE_SIZE}×{ARCFACE_SIZE} aligned faces, got {tuple(faces.shape)}: "
                "align them with hfgi3d.faces.align_arcface"
            )
        x = self.prelu(self.bn1(self.conv1(faces)))  # B×64×112×112
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # B×512×7×7
        x = self.bn2(x).flatten(1)  # B×25088
        return self.features(self.fc(x))  # B×512


def _stage_block_counts(keys: Sequence[str]) -> tuple[int, ...]:
    """Blocks per stage, read from ``layer{s}.{i}.`` key prefixes."""
    blocks: dict[int, set[int]] = {}
    for key in keys:
        match = re.match(r"layer(\d+)\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    return tuple(len(blocks.get(stage, ())) for stage in range(1, len(_STAGE_CHANNELS) + 1))


def infer_arcface_arch(state_dict: Mapping[str, Tensor]) -> ArcFaceArch:
    """``"r50"`` or ``"r100"`` from the number of blocks per stage of an arcface_torch state dict."""
    counts = _stage_block_counts(list(state_dict))
    for arch in get_args(ArcFaceArch):
        if counts == ARCFACE_LAYERS[arch]:
            return arch
    raise ValueError(
        f"the checkpoint's stages hold {counts} blocks, which matches no supported IResNet "
        f"({', '.join(f'{arch}: {ARCFACE_LAYERS[arch]}' for arch in get_args(ArcFaceArch))}): "
        "pass an arcface_torch r50 or r100 backbone.pth"
    )


def _check_keys(model: nn.Module, state_dict: dict[str, Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict and not key.endswith(_COUNTER_SUFFIX)]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path} is not an arcface_torch IResNet-{arch} state dict: "
            f"{len(missing)} missing keys {missing[:_KEYS_SHOWN]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:_KEYS_SHOWN]}, "
            f"{len(wrong_shape)} wrong shapes {wrong_shape[:_KEYS_SHOWN]}; {ARCFACE_CHECKPOINT_HELP}"
        )


def load_arcface(
    path: str | Path, arch: ArcFaceArch | None = None, *, device: torch.device | str | None = None
) -> IResNet:
    """Load an insightface arcface_torch ``backbone.pth`` into a frozen :class:`IResNet` in eval mode.

    Args:
        path: the checkpoint, a plain state dict (read with ``weights_only=True``).
        arch: ``"r50"`` or ``"r100"``; ``None`` infers it from the number of blocks per stage.
        device: where to put the model (default CPU).

    Raises:
        FileNotFoundError: no such file (the message says where to get one).
        ValueError: not a state dict, unknown architecture, or missing / unexpected / misshapen keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace checkpoint {path} not found: {ARCFACE_CHECKPOINT_HELP}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict; {ARCFACE_CHECKPOINT_HELP}")
    state_dict = {key: value for key, value in loaded.items() if isinstance(value, Tensor)}
    arch = arch if arch is not None else infer_arcface_arch(state_dict)
    if arch not in ARCFACE_LAYERS:
        raise ValueError(f"unknown ArcFace architecture {arch!r}: expected one of {sorted(ARCFACE_LAYERS)}")
    model = IResNet(ARCFACE_LAYERS[arch])
    _check_keys(model, state_dict, path, arch)
    # Counters may be absent from converted checkpoints; they do not affect eval-mode outputs.
    for key, value in model.state_dict().items():
        if key.endswith(_COUNTER_SUFFIX):
            state_dict.setdefault(key, value)
    # fp16-trained releases may store half tensors: the model computes in float32.
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}, strict=True)
    return model.eval().requires_grad_(False).to(device)


def embed(model: nn.Module, faces: Tensor) -> Tensor:
    """Unit-length ArcFace embeddings of aligned faces.

    Args:
        model: an :class:`IResNet` in eval mode (from :func:`load_arcface`).
        faces: ``B×3×112×112`` in ``[-1, 1]``, RGB, aligned with :func:`hfgi3d.faces.align_arcface`.

    Returns:
        ``B×512``, L2-normalised. Differentiable with respect to ``faces``.
    """
    if model.training:
        raise ValueError("embed needs the ArcFace model in eval mode (BatchNorm running statistics): call .eval()")
    parameter = next(model.parameters())
    features = model(faces.to(device=parameter.device, dtype=parameter.dtype))  # B×512
    return F.normalize(features, dim=1)


def _check_pair(image_a: Tensor, image_b: Tensor) -> None:
    if image_a.ndim != 4 or image_b.ndim != 4 or len(image_a) != len(image_b):
        raise ValueError(
            f"expected two B×3×H×W batches of equal size, got {tuple(image_a.shape)} and {tuple(image_b.shape)}"
        )


@torch.no_grad()
def identity_similarity(
    model: nn.Module,
    detector: MTCNN,
    image_a: Tensor,
    image_b: Tensor,
    *,
    names: tuple[str, str] = ("image_a", "image_b"),
) -> Tensor:
    """ArcFace cosine similarity of the most confident face of each image pair.

    Each image is detected and aligned on its own landmarks (insightface's ``norm_crop``), then
    embedded; the result is the cosine of the two embeddings.

    Args:
        model: from :func:`load_arcface`.
        detector: from :func:`hfgi3d.faces.make_detector`.
        image_a, image_b: ``B×3×H×W`` in ``[-1, 1]``, RGB (their sizes may differ).
        names: how errors call the two batches.

    Returns:
        ``B`` cosine similarities (1 = same embedding), on the model's device.

    Raises:
        NoFaceError: no face in one of the images (named ``{name}[i]``); the caller decides to skip.
    """
    _check_pair(image_a, image_b)
    aligned = [
        align_arcface(images, detect_best_faces(detector, images, name=name).landmarks)  # B×3×112×112
        for images, name in zip((image_a, image_b), names, strict=True)
    ]
    embedding_a, embedding_b = embed(model, torch.cat(aligned)).chunk(2)  # B×512 each
    return (embedding_a * embedding_b).sum(dim=1)


# ----------------------------------------------------------------------------------------------
# FaceNet (facenet-pytorch InceptionResnetV1, VGGFace2), optional: its weights are downloaded,
# never bundled.


def facenet_weights_path() -> Path:
    """Where facenet-pytorch caches the VGGFace2 weights: ``<torch home>/checkpoints`` (not torch hub's dir).

    ``<torch home>`` is ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``,
    as facenet-pytorch's own ``get_torch_home``.
    """
    return Path(get_torch_home()) / "checkpoints" / FACENET_VGGFACE2_FILE


def load_facenet(device: torch.device | str | None = None) -> InceptionResnetV1:
    """facenet-pytorch's ``InceptionResnetV1(pretrained='vggface2')``, frozen, eval mode, never downloading.

    Raises:
        FileNotFoundError: the weights are not cached (the message says where to put them).
    """
    path = facenet_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"FaceNet weights {path} not found (hfgi3d does not download them): fetch {FACENET_VGGFACE2_URL} "
            "into that folder, or run InceptionResnetV1(pretrained='vggface2') once with internet access"
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = InceptionResnetV1(pretrained=None, classify=False)
    # The VGGFace2 classifier head (`logits.*`, 8631 identities) is not needed for embeddings.
    model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("logits.")}, strict=True)
    return model.eval().requires_grad_(False).to(device)


def facenet_crops(images: Tensor, boxes: Tensor) -> Tensor:
    """FaceNet inputs as facenet-pytorch's ``MTCNN(image_size=160, margin=0)`` builds them.

    Each box is truncated to integer pixels and clipped to the image (``extract_face``), the crop
    is area-resized to 160×160 and standardised with ``(x₂₅₅ − 127.5) / 128``
    (``fixed_image_standardization``).

    Args:
        images: ``B×3×H×W`` in ``[-1, 1]``, RGB.
        boxes: ``B×4`` MTCNN boxes ``(x0, y0, x1, y1)`` in pixels.

    Returns:
        ``B×3×160×160``.
    """
    height, width = images.shape[-2:]
    crops = []
    for image, box in zip(images, boxes.tolist(), strict=True):
        x0, y0 = int(max(box[0], 0)), int(max(box[1], 0))
        x1, y1 = int(min(box[2], width)), int(min(box[3], height))
        crop = image[None, :, y0:y1, x0:x1]  # 1×3×h×w
        crops.append(F.interpolate(crop, size=(FACENET_SIZE, FACENET_SIZE), mode="area"))
    pixels_255 = (torch.cat(crops) + 1) * _HALF_RANGE_8BIT  # B×3×160×160
    return (pixels_255 - _FACENET_CENTRE) / _FACENET_SCALE


@torch.no_grad()
def facenet_similarity(
    model: nn.Module,
    detector: MTCNN,
    image_a: Tensor,
    image_b: Tensor,
    *,
    names: tuple[str, str] = ("image_a", "image_b"),
) -> Tensor:
    """FaceNet (VGGFace2) cosine similarity of the most confident face of each image pair.

    Args:
        model: from :func:`load_facenet`.
        detector: from :func:`hfgi3d.faces.make_detector`.
        image_a, image_b: ``B×3×H×W`` in ``[-1, 1]``, RGB.
        names: how errors call the two batches.

    Returns:
        ``B`` cosine similarities.

    Raises:
        NoFaceError: no face in one of the images; the caller decides to skip.
    """
    _check_pair(image_a, image_b)
    crops = [
        facenet_crops(images, detect_best_faces(detector, images, name=name).boxes)  # B×3×160×160
        for images, name in zip((image_a, image_b), names, strict=True)
    ]
    parameter = next(model.parameters())
    embeddings = model(torch.cat(crops).to(device=parameter.device, dtype=parameter.dtype))  # 2B×512
    # InceptionResnetV1 already normalises (classify=False); normalising again keeps any model honest.
    embedding_a, embedding_b = F.normalize(embeddings, dim=1).chunk(2)
    return (embedding_a * embedding_b).sum(dim=1)
