"""``python -m hfgi3d directions fit``: an attribute direction in W, as the paper's Appendix A.2 makes it.

Samples ``z``, maps them under the canonical (frontal) camera, renders each latent there and
scores the render with a scorer. Keeps the ``top`` highest- and ``top`` lowest-scoring samples,
trains a linear SVM (scikit-learn) on a random 70 % of them and measures its accuracy on the other
30 %. The SVM's unit normal, oriented towards high scores, is the direction.

Scores are written in chunks of ``chunk`` samples next to the output (``.<name>.scores/``) as they
are computed, so a killed run continues where it stopped; each chunk's ``z`` comes from its own
seed, so only the scores are stored, and the kept samples' ``w`` are mapped again at the end.

Renders without a face (a ``NaN`` score, :mod:`hfgi3d.editing.scorers`) are left out of the ranking and
counted (``samples_without_face`` in the metadata); the run stops with a one-line error as soon as
fewer than ``2·top`` scored samples can remain. Any other non-finite score is the scorer's fault and
an error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hfgi3d.editing.scorers import make_scorer, scorer_details
from hfgi3d.errors import InputError
from hfgi3d.io import atomic_path, file_sha256, write_json_atomic


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
        raise InputError(f"{out} exists; pass --overwrite or another --output")
    if not out.parent.is_dir():
        raise InputError(f"the folder of {out} does not exist")
    score_fn = make_scorer(scorer, classifier, output_index, input_size, input_range, device)
    generator = open_generator(generator_spec).to(device).eval()
    sha256 = file_sha256(generator_spec)
    details = scorer_details(scorer, classifier, output_index, input_size, input_range)
    run = {"generator": generator_spec, "generator_sha256": sha256, "scorer": scorer, **details,
           "seed": seed, "chunk": chunk, "truncation_psi": truncation_psi}  # fmt: skip
    store = out.parent / f".{out.stem}.scores"
    store.mkdir(exist_ok=True)
    run_file = store / "run.json"
    stored = json.loads(run_file.read_text()) if run_file.exists() else None
    if stored is not None and stored != run and any(store.glob("chunk*.pt")):
        changed = ", ".join(key for key in run if stored.get(key) != run[key])
        raise InputError(f"{store} holds scores of another run ({changed} differ); delete it or pick another --output")
    if stored != run:  # a new run, or one that stopped before its first chunk
        write_json_atomic(run_file, run)

    camera = frontal_c25().to(device)
    z_dim = generator.config.z_dim

    def mapped(z: Tensor) -> Tensor:
        return generator.mapping(z.to(device), camera.expand(len(z), -1), truncation_psi=truncation_psi)

    chunks = (samples + chunk - 1) // chunk
    started = time.perf_counter()
    computed = 0
    without_face = 0
    scores = []
    with tqdm(total=samples, desc=f"scoring ({scorer})", unit="sample", disable=not progress) as bar:
        for index in range(chunks):
            size = min(chunk, samples - index * chunk)
            path = store / f"chunk{index:06d}.pt"
            stored_values = torch.load(path, weights_only=True) if path.exists() else None
            if stored_values is not None and len(stored_values) == size:
                values = stored_values
                bar.update(size)
            else:
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
            if bool(values.isinf().any()):
                raise InputError(f"the {scorer} scorer gave infinite scores; see {store}")
            without_face += int(values.isnan().sum())
            if samples - without_face < 2 * top:
                rendered = index * chunk + size
                hint = "lower --top or raise --samples" if without_face < rendered else "does --generator render faces?"
                raise InputError(
                    f"the {scorer} scorer found no face in {without_face} of the first {rendered} renders: fewer than "
                    f"2·top = {2 * top} of the {samples} samples can be ranked; {hint}"
                )
    score_seconds = time.perf_counter() - started
    all_scores = torch.cat(scores)

    scored = (~all_scores.isnan()).nonzero()[:, 0]  # samples with a face, in sample order
    order = scored[torch.argsort(all_scores[scored])]
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
        "generator": str(generator_spec), "generator_sha256": sha256, "scorer": scorer, **details,
        "attribute": attribute,
        "samples": samples, "top": top, "accuracy": accuracy, "seed": seed, "truncation_psi": truncation_psi,
        "score_range": [float(all_scores[scored].min()), float(all_scores[scored].max())],
        "samples_without_face": without_face,
        "seconds_scoring": score_seconds, "samples_scored_now": computed,
    }  # fmt: skip
    with atomic_path(out) as temporary:
        torch.save({"direction": direction, "metadata": metadata}, temporary)
    return metadata
