"""Ground-truth curves: the paper's Figure 2 on the synthetic benchmark.

Every ``every_n_steps`` steps (and at the end of each stage) of a fit of a synthetic benchmark image
(:mod:`hfgi3d.benchmarks.synthetic`), the current latent and generator are rendered at the input
camera and at the 5 novel cameras whose ground truth the benchmark knows; the callback logs

* ``truth/input_psnr``: the input view against the (painted) input photo;
* ``truth/novel_psnr``: the 5 novel views against their ground truth;
* ``truth/paint_psnr``: the same over the paint carried into the novel views only (does the detail
  survive a new viewpoint?)

to every attached logger (``metrics.csv``, W&B). ``benchmarks/groundtruth_figures.py`` draws them.
A batch of photos logs the mean over its live photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from hfgi3d.benchmarks.synthetic import score_novel_views
from hfgi3d.metrics.fidelity import psnr

from .evaluation import current_renders, curve_step
from .protocols import inversion_of, photos_of

CURVE_KEYS = ("truth/input_psnr", "truth/novel_psnr", "truth/paint_psnr")
"""What :class:`GroundTruthCurves` logs, in the order the figure draws them."""


class GroundTruthCurves(L.Callback):
    """Log input-view, novel-view and paint PSNR against a synthetic image's ground truth during a fit.

    Args:
        truth_dir: the synthetic benchmark's data folder: ``<image id>.pt`` for each photo of the fit.
        every_n_steps: log every so many steps (and at each stage's last step).
    """

    def __init__(self, truth_dir: str, every_n_steps: int = 20) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.truth_dir = Path(truth_dir)
        self.every_n_steps = every_n_steps
        self._cases: list[dict[str, torch.Tensor]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = photos_of(trainer)
        self._cases = []
        for image_id in datamodule.image_ids:
            path = self.truth_dir / f"{image_id}.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"no ground truth for {image_id}: {path} (truth_dir is the benchmark's data folder)"
                )
            self._cases.append(torch.load(path, map_location="cpu", weights_only=True))

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        module = inversion_of(pl_module)
        step = trainer.global_step  # steps done, this one included
        if not curve_step(module, step, self.every_n_steps):
            return
        novel = torch.stack([case["c_novel"] for case in self._cases]).to(module.device)  # N×5×25
        cameras = torch.cat([module.input_camera(batch["c25"])[:, None], novel], dim=1)  # N×6×25
        rendered = current_renders(module, cameras)  # N×6×3×R×R
        found: dict[str, list[float]] = {key: [] for key in CURVE_KEYS}
        for photo, case in enumerate(self._cases):
            if not bool(module.alive[photo]):
                continue
            scores = score_novel_views(rendered[photo, 1:], case)
            found["truth/input_psnr"].append(float(psnr(rendered[photo, :1], batch["image"][photo : photo + 1])[0]))
            found["truth/novel_psnr"].append(float(scores["novel_psnr"]))  # type: ignore[arg-type]
            if scores["paint_psnr"] is not None:
                found["truth/paint_psnr"].append(float(scores["paint_psnr"]))
        values = {key: sum(v) / len(v) for key, v in found.items() if v}
        # Straight to the loggers, as the evaluation callback does (`self.log` would repeat the values).
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
