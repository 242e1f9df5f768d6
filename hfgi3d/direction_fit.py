"""``python -m hfgi3d directions fit``: an attribute direction in W, as the paper's Appendix A.2 makes it.

Samples ``z``, maps them under the canonical (frontal) camera, renders each latent there and
scores the render with a scorer. Keeps the ``top`` highest- and ``top`` lowest-scoring samples,
trains a linear SVM (scikit-learn) on a random 70 % of them and measures its accuracy on the other
30 %. The SVM's unit normal, oriented towards high scores, is the direction.

Scores are written in chunks of ``chunk`` samples next to the output (``.<name>.scores/``) as they
are computed, so a killed run continues where it stopped; each chunk's ``z`` comes from its own
seed, so only the scores are stored, and the kept samples' ``w`` are mapped again at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hfgi3d.errors import InputError
from hfgi3d.io import atomic_path, write_json_atomic

Scorer = Callable[[Tensor], Tensor]
"""Renders ``N×3×H×W`` in ``[-1, 1]`` → scores ``N``."""


def mean_luma(images: Tensor) -> Tensor:
    """Mean Rec. 601 luma of each image, in ``[0, 1]``: model-free, for tests and demonstrations."""
    rgb = images.clamp(-1, 1) * 0.5 + 0.5
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("nchw,c->n", rgb, weights) / (rgb.shape[-1] * rgb.shape[-2])


SCORERS: dict[str, Scorer] = {"mean_luma": mean_luma}
"""The model-free scorers. ``classifier`` (a user's TorchScript model) is built by :func:`make_scorer`;
the smile and age/gender scorers are not written yet."""

INPUT_RANGES = ("0,1", "-1,1", "imagenet")
"""How a classifier wants its input: ``[0, 1]``, ``[-1, 1]``, or ImageNet-normalised ``[0, 1]``."""

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def classifier_scorer(path: Path, output_index: int, input_size: int, input_range: str, device: str) -> Scorer:
    """A TorchScript image classifier as a scorer: renders resized to ``input_size``² (antialiased),
    mapped to ``input_range``, scored by output ``output_index`` (a logit or a regression output)."""
    import torch.nn.functional as F

    if not path.is_file():
        raise InputError(f"no classifier file {path}")
    if input_range not in INPUT_RANGES:
        raise InputError(f"--classifier-range must be one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    try:
        model = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path} is not a TorchScript model ({first}); save one with torch.jit.script/trace") from None

    def score(images: Tensor) -> Tensor:
        x = F.interpolate(images.clamp(-1, 1), size=(input_size, input_size), mode="bilinear", antialias=True)
        if input_range != "-1,1":
            x = x * 0.5 + 0.5
        if input_range == "imagenet":
            mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        out = model(x)
        if out.dim() != 2 or not 0 <= output_index < out.shape[1]:
            raise InputError(
                f"{path.name} outputs shape {tuple(out.shape)}; --output-index {output_index} does not fit"
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
    """The scorer called ``name``: a model-free one of :data:`SCORERS`, or ``classifier``."""
    if name == "classifier":
        if classifier is None:
            raise InputError("--scorer classifier needs --classifier MODEL.pt (a TorchScript model)")
        return classifier_scorer(classifier, output_index, input_size, input_range, device)
    if name not in SCORERS:
        raise InputError(f"unknown scorer {name!r}; available: {', '.join([*SCORERS, 'classifier'])}")
    return SCORERS[name]


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a generator file, or ``None`` for a spec that is no file (``tiny``, a .yaml config)."""
    path = Path(path)
    if not path.is_file() or path.suffix in (".yaml", ".yml"):
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunk_z(seed: int, index: int, size: int, z_dim: int) -> Tensor:
    return torch.randn(size, z_dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + index))


def fit_direction(
    generator_spec: str,
    scorer: str,
    attribute: str,
    samples: int,
    top: int,
    out: Path,
    seed: int = 0,
    batch_size: int = 16,
    chunk: int = 1000,
    truncation_psi: float = 1.0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    classifier: Path | None = None,
    output_index: int = 0,
    input_size: int = 224,
    input_range: str = "0,1",
) -> dict[str, Any]:
    """Fit the direction and write ``out`` (``{"direction": (w_dim,), "metadata": {...}}``); returns the metadata."""
    from sklearn.svm import LinearSVC
    from tqdm import tqdm

    from hfgi3d.cameras import frontal_c25
    from hfgi3d.generator import open_generator

    if top < 2 or samples < 2 * top:
        raise InputError(f"--top {top} needs at least 2 and --samples ≥ 2·top (got --samples {samples})")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite or another --out")
    if not out.parent.is_dir():
        raise InputError(f"the folder of {out} does not exist")
    score_fn = make_scorer(scorer, classifier, output_index, input_size, input_range, device)
    generator = open_generator(generator_spec).to(device).eval()
    sha256 = file_sha256(generator_spec)
    scorer_details = (
        {"classifier": str(classifier), "classifier_sha256": file_sha256(classifier), "output_index": output_index,
         "input_size": input_size, "input_range": input_range}
        if scorer == "classifier" and classifier is not None else {}
    )  # fmt: skip
    run = {"generator": generator_spec, "generator_sha256": sha256, "scorer": scorer, **scorer_details,
           "seed": seed, "chunk": chunk, "truncation_psi": truncation_psi}  # fmt: skip
    store = out.parent / f".{out.stem}.scores"
    store.mkdir(exist_ok=True)
    run_file = store / "run.json"
    stored = json.loads(run_file.read_text()) if run_file.exists() else None
    if stored is not None and stored != run and any(store.glob("chunk*.pt")):
        changed = ", ".join(key for key in run if stored.get(key) != run[key])
        raise InputError(f"{store} holds scores of another run ({changed} differ); delete it or pick another --out")
    if stored != run:  # a new run, or one that stopped before its first chunk
        write_json_atomic(run_file, run)

    camera = frontal_c25().to(device)
    z_dim = generator.config.z_dim

    def mapped(z: Tensor) -> Tensor:
        return generator.mapping(z.to(device), camera.expand(len(z), -1), truncation_psi=truncation_psi)

    chunks = (samples + chunk - 1) // chunk
    started = time.perf_counter()
    computed = 0
    scores = []
    bar = tqdm(total=samples, desc=f"scoring ({scorer})", unit="sample", disable=not progress)
    for index in range(chunks):
        size = min(chunk, samples - index * chunk)
        path = store / f"chunk{index:06d}.pt"
        if path.exists():
            values = torch.load(path, weights_only=True)
            if len(values) == size:
                scores.append(values)
                bar.update(size)
                continue
        z = _chunk_z(seed, index, chunk, z_dim)[:size]
        values_list = []
        with torch.no_grad():
            for batch in z.split(batch_size):
                ws = mapped(batch)
                image = generator.synthesis(ws, camera.expand(len(batch), -1), deterministic=True)["image"]
                values_list.append(score_fn(image).float().cpu())
                bar.update(len(batch))
        values = torch.cat(values_list)
        with atomic_path(path) as temporary:
            torch.save(values, temporary)
        computed += size
        scores.append(values)
    bar.close()
    score_seconds = time.perf_counter() - started
    all_scores = torch.cat(scores)
    if not bool(torch.isfinite(all_scores).all()):
        raise InputError(f"the scorer gave non-finite scores; see {store}")

    order = torch.argsort(all_scores)
    kept = torch.cat([order[-top:], order[:top]])  # positives, then negatives
    labels = np.concatenate([np.ones(top), np.zeros(top)])
    w = torch.empty(len(kept), generator.config.w_dim)
    for index in torch.unique(kept // chunk).tolist():
        members = (kept // chunk == index).nonzero()[:, 0]
        z = _chunk_z(seed, index, chunk, z_dim)[kept[members] - index * chunk]
        with torch.no_grad():
            w[members] = mapped(z)[:, 0].cpu()
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(len(kept))
    split = round(0.7 * len(kept))
    train, test = permutation[:split], permutation[split:]
    features = w.double().numpy()
    svm = LinearSVC(C=1.0, max_iter=20_000).fit(features[train], labels[train])
    accuracy = float(svm.score(features[test], labels[test])) if len(test) else float("nan")
    normal = torch.from_numpy(svm.coef_[0]).float()
    direction = normal / normal.norm()
    metadata: dict[str, Any] = {
        "generator": str(generator_spec), "generator_sha256": sha256, "scorer": scorer, **scorer_details,
        "attribute": attribute,
        "samples": samples, "top": top, "accuracy": accuracy, "seed": seed, "truncation_psi": truncation_psi,
        "score_range": [float(all_scores.min()), float(all_scores.max())],
        "seconds_scoring": score_seconds, "samples_scored_now": computed,
    }  # fmt: skip
    with atomic_path(out) as temporary:
        torch.save({"direction": direction, "metadata": metadata}, temporary)
    return metadata
