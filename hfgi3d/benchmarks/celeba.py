"""The paper's protocol (docs/method.md §9): 1500 random CelebA-HQ images, every method, every metric.

Each job aligns its photo with :func:`hfgi3d.preprocess.preprocess` (once per image, into
``aligned/<image id>/``), inverts it with the method's preset (``hfgi3d.benchmarks.METHODS``) and the
given EG3D checkpoint, and returns the run's ``metrics.json`` as its row. The image list (sampled
with a fixed seed from the sorted folder listing) is written to ``images.txt`` next to the results.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from hfgi3d.benchmarks.runner import Job, Photo, Worker, run_fit

DATA_ENV = "HFGI3D_CELEBAHQ"
GENERATOR_ENV = "HFGI3D_EG3D"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PAPER_IMAGES = 1500

DATA_HELP = (
    "CelebA-HQ is not downloaded by hfgi3d (its licence needs an agreement): get the 30,000 images "
    "(e.g. CelebAMask-HQ's CelebA-HQ-img folder of 1024² JPEGs) and pass --data FOLDER or set "
    f"{DATA_ENV}=FOLDER"
)
GENERATOR_HELP = (
    "the EG3D FFHQ checkpoint is needed: download ffhq512-128.pkl from NVIDIA's EG3D page in the NGC "
    f"catalog (nvidia/research/models/eg3d) and pass --generator FILE or set {GENERATOR_ENV}=FILE"
)


class MissingInputError(FileNotFoundError):
    """The benchmark's data or weights are not there; the message says what to provide."""


def resolve_inputs(data: str | None, generator: str | None) -> tuple[Path, str]:
    """The CelebA-HQ folder and the generator file, from the arguments or the environment."""
    data = data or os.environ.get(DATA_ENV)
    generator = generator or os.environ.get(GENERATOR_ENV)
    problems = []
    if not data or not Path(data).is_dir():
        problems.append(f"no CelebA-HQ folder{f' at {data}' if data else ''}: {DATA_HELP}")
    if not generator or not Path(generator).is_file():
        problems.append(f"no generator{f' at {generator}' if generator else ''}: {GENERATOR_HELP}")
    if problems:
        raise MissingInputError("\n".join(problems))
    assert data is not None and generator is not None
    return Path(data), generator


def sample_images(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` photos drawn without replacement from the sorted listing with ``random.Random(seed)``."""
    photos = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise MissingInputError(f"{folder} holds no .jpg/.png images: {DATA_HELP}")
    if count > len(photos):
        raise ValueError(f"asked for {count} images but {folder} holds only {len(photos)}")
    return random.Random(seed).sample(photos, count)


def write_image_list(path: Path, photos: list[Path], seed: int) -> None:
    """``images.txt``: the sampled file names, in job order, under a header naming the seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# {len(photos)} images sampled with random.Random({seed}).sample(sorted listing)",
        *(p.name for p in photos),
    ]
    path.write_text("\n".join(lines) + "\n")


def make_job_fn(generator: str, profile: str | None, folder: Path, wandb_group: str | None) -> Any:
    """The job function: align each photo (once), fit the method's preset on the batch, return each
    photo's ``metrics.json`` (a photo preprocessing skips gets an error row; the others go on)."""
    from hfgi3d.preprocess import preprocess

    def align(job: Job) -> Path:
        photo = Path(job.payload["photo"])
        aligned = folder / "aligned" / job.image_id
        crop = aligned / f"{photo.stem}.png"
        if not crop.is_file():
            report = preprocess(photo, aligned)
            if report.skipped:
                skipped = report.skipped[0]
                raise ValueError(f"preprocessing skipped {photo.name} ({skipped.code}): {skipped.reason}")
        return crop

    def run_job(jobs: list[Job], worker: Worker) -> list[dict[str, Any]]:
        rows: dict[int, dict[str, Any]] = {}
        photos, fitted = [], []
        root = folder / "runs" / jobs[0].method
        if len(jobs) > 1:
            root = root / f"batch_{jobs[0].image_id}"
        for index, job in enumerate(jobs):
            try:
                crop = align(job)
            except Exception as error:  # this photo only
                rows[index] = {"error": f"{type(error).__name__}: {error}"}
                continue
            out = folder / "runs" / job.method / job.image_id if len(jobs) == 1 else root / crop.stem
            photos.append(Photo(crop, crop.parent / "dataset.json", out))
            fitted.append(index)
        # No generator.pt: 1500 photos × 5 methods at 63 MB each would fill a disk; the metrics are all we keep.
        extra = ("--outputs.save_generator", "none")
        if photos:
            batch = [jobs[index] for index in fitted]
            for index, metrics in zip(
                fitted, run_fit(batch, worker, generator, profile, photos, wandb_group, extra), strict=True
            ):
                rows[index] = {key: value for key, value in metrics.items() if key != "image_id"}
        return [rows[index] for index in range(len(jobs))]

    return run_job
