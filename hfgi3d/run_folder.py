"""The files of a run folder, named once: what ``fit`` writes into ``--output_dir`` (each photo's folder
of a batch, ``edit-texture``'s result), and what ``edit``, ``edit-texture``, resuming a batch job and
the benchmarks read back. Pictures, video and meshes are named where they are written
(``callbacks/outputs.py``)."""

from __future__ import annotations

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
"""The input camera: the one given and, with ``model.refine_camera``, the refined one."""
FAILED = "failed.json"
"""Instead of results: the photo's id and why it was dropped from its batch."""
RESULT_FILES = (METRICS, RECONSTRUCTION)
"""The files whose presence means the folder holds results (``--overwrite`` replaces them)."""
