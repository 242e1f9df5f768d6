"""Time one inversion and its evaluation: per-step time of each stage, the hand-over, the evaluation.

    python benchmarks/inversion_speed.py --estimate-steps 50 --pseudo-multiview-steps 50 --out inversion_speed.json

Runs :class:`~hfgi3d.inversion.InversionModule` with the paper's preset (``configs/hfgi3d.yaml``;
the options below override it) on the bundled sample photo (upsampled to the generator's size,
frontal camera) with a Lightning ``Trainer`` and the
:class:`~hfgi3d.callbacks.evaluation.Evaluation` callback, and prints one JSON object: median
step time per stage (first step of each stage excluded), the hand-over (``w_o`` fit + pseudo-view
construction, measured inside the first stage-2 step), evaluation seconds and peak CUDA memory.
Random generator weights are fine (speed does not depend on their values); pass real
``--arcface-checkpoint`` / ``--ibrnet-checkpoint`` files, or files in their formats, to include
identity and IBRNet in the evaluation time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hfgi3d.callbacks.evaluation import Evaluation
from hfgi3d.data.datamodule import PseudoViewDataModule
from hfgi3d.data.inputs import SAMPLE
from hfgi3d.data.pseudo_views import PseudoViewConfig
from hfgi3d.inversion import ESTIMATE, InversionModule
from hfgi3d.metrics.evaluation import EvaluationConfig
from hfgi3d.presets import load_preset, preset_path


class StepTimer(L.Callback):
    """Wall time of every training step (CUDA-synchronised), keyed by stage."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self.device = "cpu"
        self._started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device  # Lightning moves the module back to the CPU when the fit ends
        self.device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        module: Any = pl_module
        self.steps.append((module.stage_at(trainer.global_step - 1), time.perf_counter() - self._started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default=str(preset_path("generator/ffhq512.yaml")))
    parser.add_argument("--estimate-steps", type=int, default=50)
    parser.add_argument("--pseudo-multiview-steps", type=int, default=50)
    parser.add_argument("--occluded-steps", type=int, default=200)
    parser.add_argument("--num-views", type=int, default=16)
    parser.add_argument("--poisson-iterations", type=int, default=2000)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--lpips-weights-vgg", default=None)
    parser.add_argument("--lpips-weights-alex", default=None)
    parser.add_argument("--arcface-checkpoint", default=None)
    parser.add_argument("--ibrnet-checkpoint", default=None)
    parser.add_argument("--ibrnet-resolution", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    preset = load_preset("hfgi3d.yaml")
    module = InversionModule(
        **{
            **preset["model"],
            "generator": args.generator,
            "estimate_steps": args.estimate_steps,
            "occluded_steps": args.occluded_steps,
            "pseudo_multiview_steps": args.pseudo_multiview_steps,
            "lpips_weights": args.lpips_weights_vgg,
        }
    )
    data = preset["data"]
    views = PseudoViewConfig(**{**data["pseudo_views"], "poisson_iterations": args.poisson_iterations})
    datamodule = PseudoViewDataModule(
        image=SAMPLE, num_views=args.num_views, mode=data["mode"], pseudo_views=views, seed=data["seed"]
    )
    metrics_config = EvaluationConfig(
        **{
            **preset["evaluation"]["metrics"],
            "lpips_weights_vgg": args.lpips_weights_vgg,
            "lpips_weights_alex": args.lpips_weights_alex,
            "arcface_checkpoint": args.arcface_checkpoint,
            "ibrnet_checkpoint": args.ibrnet_checkpoint,
            "ibrnet_resolution": args.ibrnet_resolution,
        }
    )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as folder:
        evaluation = Evaluation(every_n_steps=0, metrics=metrics_config, output_dir=folder)
        trainer = L.Trainer(
            accelerator=args.accelerator,
            devices=1,
            max_steps=module.total_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer, evaluation],
            default_root_dir=folder,
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule)
        total = time.perf_counter() - started
    metrics = evaluation.metrics or {}
    estimate = [seconds for stage, seconds in timer.steps if stage == ESTIMATE]
    tuning = [seconds for stage, seconds in timer.steps if stage != ESTIMATE]
    result = {
        "device": timer.device,
        "torch": torch.__version__,
        "generator": args.generator,
        "steps": {"estimate": len(estimate), "pseudo_multiview": len(tuning)},
        "estimate_step_s": statistics.median(estimate[1:] or estimate),
        "pseudo_multiview_step_s": statistics.median(tuning[1:] or tuning),
        "hand_over_s": tuning[0] - statistics.median(tuning[1:] or tuning) if tuning else None,
        "fit_s": metrics.get("seconds"),
        "eval_s": metrics.get("eval_seconds"),
        "total_s": total,
        "peak_gpu_memory_mb": metrics.get("peak_gpu_memory_mb"),
        "metrics_computed": sorted(k for k, v in metrics.items() if isinstance(v, float) and k not in ("seconds",)),
        "num_views": args.num_views,
        "occluded_steps": args.occluded_steps,
        "poisson_iterations": args.poisson_iterations,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
