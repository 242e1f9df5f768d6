"""The files of a run folder, named once: what ``fit`` writes into ``--output_dir`` (each photo's folder
of a batch, ``edit-texture``'s result), and what ``edit``, ``edit-texture``, resuming a batch job and
the benchmarks read back. Pictures, video and meshes are named where they are written
(``callbacks/outputs.py``)."""

from __future__ import annotations

from pathlib import Path

from hfgi3d.errors import InputError

CONFIG = "config.yaml"
"""The run's configuration as the user gave it, before ``fit`` filled in the output folder: ``edit-texture``
reruns stage 2 from it, ``edit`` reads settings from it, and ``fit --config RUN/config.yaml`` repeats the run."""
LATENT = "latent.pt"
"""``ws`` (the final latent), ``ws_estimate`` (stage 1's ``w_e``), ``ws_occluded`` (``w_o``) and ``c25``."""
GENERATOR = "generator.pt"
"""The tuned generator (an hfgi3d checkpoint; float16 unless ``outputs.save_generator`` says otherwise)."""
METRICS = "metrics.json"
"""The evaluation's row (written last: with :data:`RECONSTRUCTION` it marks a finished run)."""
INPUT = "input.png"
"""The aligned input photo at the generator's resolution (what ``edit-texture`` paints on)."""
RECONSTRUCTION = "reconstruction.png"
"""The tuned generator's render from the input camera."""
CAMERA = "camera.json"
"""The input camera: the one given and, with ``model.camera.refine``, the refined one."""
FAILED = "failed.json"
"""Instead of results: the photo's id and why it was dropped from its batch."""
RESULT_FILES = (METRICS, RECONSTRUCTION)
"""The files whose presence means the folder holds results (``--overwrite`` replaces them)."""


def check_finished_run(folder: str | Path) -> Path:
    """``folder`` as a :class:`~pathlib.Path` if it holds a finished fit that can be edited (its
    :data:`LATENT` and :data:`CONFIG`); a one-line :class:`~hfgi3d.errors.InputError` otherwise. Reads no
    file and imports nothing heavy, so ``edit`` and ``edit-texture`` refuse a wrong folder at once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"no run folder {folder}")
    missing = [name for name in (LATENT, CONFIG) if not (folder / name).is_file()]
    if missing and not (folder / METRICS).is_file():
        raise InputError(f"{folder} is not the output folder of a finished fit (no {' or '.join(missing)})")
    if missing:  # a finished fit, from before latent.pt and config.yaml were written
        raise InputError(f"{folder} holds a fit made before editing existed ({', '.join(missing)} missing): fit again")
    return folder
