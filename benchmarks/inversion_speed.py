"""Time one inversion stage by stage: step time, generator calls, VGG images and FLOPs per step.

    python benchmarks/inversion_speed.py --estimate-steps 4 --occluded-steps 3 --pseudo-multiview-steps 4 \\
        --num-views 4 --poisson-iterations 200 --device cpu --precision 32-true bf16-mixed --against dde7151

Runs :class:`~hfgi3d.inversion.InversionModule` with the paper's preset (``configs/hfgi3d.yaml``;
the options below override it) on the bundled sample photo (upsampled to the generator's size,
frontal camera) with a Lightning ``Trainer`` and prints one JSON object per precision. For each
stage: the median step time (the first step of a stage excluded), generator backbone calls and
images through the LPIPS trunk per step, FLOPs per step (``torch.utils.flop_counter``, forward
and backward, counted on the stage's last step, which is then left out of the timing because
the counter slows every op down), and the stage's peak memory. Give each stage at least three
steps so that one is timed. ``hand_over_s`` is what stage 2 costs before its
first step (the ``w_o`` fit and the pseudo-view construction, whether a commit builds the views
inside the first stage-2 step or between steps, as this one does: the time between the last
earlier step and the first stage-2 step counts), ``peak_gpu_memory_mb`` /
``peak_rss_mb`` the peak memory of the fit, ``pseudo_view_build_s`` the hand-over less its
``occluded`` steps (the pseudo-view construction and stage 2's set-up), and
``paper_schedule_s`` the whole paper schedule (1000 + 200 + 3000 steps) projected from the
medians and that construction (pass ``--num-views 16 --poisson-iterations 2000`` for the preset's).

``--against GITREF`` measures that commit too, in the same run and with the same options (in a
temporary git worktree, with this script), and prints the ratios old / new. Commits from before
the ``occluded`` stage (e.g. dde7151) fit ``w_o`` inside their first stage-2 step: their
``hand_over_s`` holds it, as this commit's holds the ``occluded`` stage. Random generator weights
are fine: speed does not depend on their values. ``--evaluation`` also times the evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()


def _build(args: argparse.Namespace, folder: str) -> tuple[Any, Any, list[Any]]:
    """Module, datamodule and callbacks of this checkout, whichever API generation it has."""
    import hfgi3d.inversion as inversion
    from hfgi3d.data import datamodule as dm
    from hfgi3d.data.pseudo_views import PseudoViewConfig

    overrides = {
        "generator": args.generator,
        "estimate_steps": args.estimate_steps,
        "occluded_steps": args.occluded_steps,
        "pseudo_multiview_steps": args.pseudo_multiview_steps,
        "lpips_weights": args.lpips_weights_vgg,
        "w_avg_samples": args.w_avg_samples,
    }
    callbacks: list[Any] = []
    try:
        from hfgi3d.presets import load_preset
    except ImportError:  # commits before the preset overhaul: the paper's values are the defaults
        module = inversion.InversionModule(**overrides)
        views = PseudoViewConfig(poisson_iterations=args.poisson_iterations)
        data = dm.PseudoViewDataModule(None, None, num_views=args.num_views, pseudo_views=views)
        return module, data, callbacks
    preset = load_preset("hfgi3d.yaml")
    if hasattr(inversion.InversionModule, "from_config"):  # the stage settings in typed groups
        model = preset["model"]
        model.update(generator=args.generator, w_avg_samples=args.w_avg_samples, compile=args.compile)
        model["estimate"]["steps"] = args.estimate_steps
        model["occluded"]["steps"] = args.occluded_steps
        model["pseudo_multiview"]["steps"] = args.pseudo_multiview_steps
        model["loss"]["lpips_weights"] = args.lpips_weights_vgg
        module = inversion.InversionModule.from_config(model)
    else:
        model = {**preset["model"], **overrides}
        if "compile" in inspect.signature(inversion.InversionModule).parameters:
            model["compile"] = args.compile
        module = inversion.InversionModule(**model)
    views = PseudoViewConfig(**{**preset["data"]["pseudo_views"], "poisson_iterations": args.poisson_iterations})
    data_args = {key: value for key, value in preset["data"].items() if key != "pseudo_views"}
    data = dm.PseudoViewDataModule(
        **{**data_args, "image": "sample", "num_views": args.num_views, "pseudo_views": views}
    )
    if args.evaluation:
        from hfgi3d.callbacks.evaluation import Evaluation
        from hfgi3d.metrics.evaluation import EvaluationConfig

        metrics = {**preset["evaluation"]["metrics"], "lpips_weights_alex": args.lpips_weights_alex}
        callbacks.append(Evaluation(every_n_steps=0, metrics=EvaluationConfig(**metrics), output_dir=folder))
    return module, data, callbacks


def _trunk(module: Any) -> Any:
    """The module every image through the LPIPS trunk enters: lpips' VGG, or the first layer of
    the hand-written trunk of older commits (which ran its layers one by one)."""
    lpips = module.lpips
    return lpips.network.net if hasattr(lpips, "network") else lpips.features[0]


def _step_seconds(steps: list[dict[str, Any]]) -> list[float]:
    """The steps' times, a FLOP-counted step's replaced by the median of the stage's other steps
    after its first (the counter's overhead is not the method's)."""
    plain = [step["seconds"] for step in steps if not step["counted"]]
    typical = statistics.median(plain[1:] or plain) if plain else 0.0
    return [typical if step["counted"] else step["seconds"] for step in steps]


def measure(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """One fit of this checkout at ``precision``; per-stage statistics."""
    import lightning as L
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with tempfile.TemporaryDirectory() as folder:
        module, data, callbacks = _build(args, folder)
        counts = {"generator_calls": 0, "vgg_images": 0}

        def count_generator(*_: Any) -> None:
            counts["generator_calls"] += 1

        def count_vgg(_: Any, inputs: tuple[Any, ...]) -> None:
            counts["vgg_images"] += len(inputs[0])

        generator = getattr(module.G, "template", module.G)  # a StackedGenerator runs its template's modules
        generator.backbone.synthesis.register_forward_pre_hook(count_generator)
        _trunk(module).register_forward_pre_hook(count_vgg)

        class Probe(L.Callback):
            """Per step: wall time (synchronised), counts, FLOPs; per stage: peak memory."""

            def __init__(self) -> None:
                self.steps: list[dict[str, Any]] = []
                self.device = "cpu"
                self._flops: Any = None
                self._started = 0.0
                self._ended: float | None = None

            def _sync(self, module: Any) -> None:
                if module.device.type == "cuda":
                    torch.cuda.synchronize(module.device)

            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                device = pl_module.device
                self.device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                self._sync(pl_module)
                if self._ended is not None:  # what ran between the steps (a stage's set-up, logging)
                    self.steps[-1]["after_s"] = time.perf_counter() - self._ended
                if pl_module.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(pl_module.device)
                counts.update(generator_calls=0, vgg_images=0)
                # FLOPs are counted on the last step of each stage only, and that step is not timed:
                # the counter intercepts every op and would slow the step down by far more than noise.
                step = trainer.global_step
                stage_now = pl_module.stage_at(step)
                last_of_stage = step + 1 >= pl_module.total_steps or pl_module.stage_at(step + 1) != stage_now
                self._flops = FlopCounterMode(display=False) if args.flops and last_of_stage else None
                if self._flops is not None:
                    self._flops.__enter__()
                self._started = time.perf_counter()

            def on_train_batch_end(self, trainer: Any, pl_module: Any, *_: Any) -> None:
                self._sync(pl_module)
                seconds = time.perf_counter() - self._started
                flops = None
                if self._flops is not None:
                    self._flops.__exit__(None, None, None)
                    flops = self._flops.get_total_flops()
                memory = torch.cuda.max_memory_allocated(pl_module.device) if pl_module.device.type == "cuda" else None
                self.steps.append({
                    "stage": pl_module.stage_at(trainer.global_step - 1), "counted": self._flops is not None,
                    "seconds": seconds, "flops": flops,
                    "memory_mb": None if memory is None else memory / 2**20, "after_s": 0.0, **counts,
                })  # fmt: skip
                self._ended = time.perf_counter()

        probe = Probe()
        trainer = L.Trainer(
            accelerator=args.accelerator, devices=1, precision=precision, max_steps=module.total_steps,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[probe, *callbacks], default_root_dir=folder,
        )  # fmt: skip
        started = time.perf_counter()
        trainer.fit(module, data)
        total = time.perf_counter() - started
    stages: dict[str, Any] = {}
    for stage in dict.fromkeys(step["stage"] for step in probe.steps):
        steps = [step for step in probe.steps if step["stage"] == stage]
        timed = [step for step in steps[1:] if not step["counted"]] or steps[-1:]
        counted = [step["flops"] for step in steps if step["counted"]]
        stages[stage] = {
            "steps": len(steps),
            "timed_steps": len(timed),
            "median_step_s": statistics.median(step["seconds"] for step in timed),
            "generator_calls_per_step": statistics.median(step["generator_calls"] for step in timed),
            "vgg_images_per_step": statistics.median(step["vgg_images"] for step in timed),
            "flops_per_step": counted[-1] if counted else None,
            "peak_gpu_memory_mb": max((s["memory_mb"] for s in steps if s["memory_mb"] is not None), default=None),
        }
    tuning = _step_seconds([step for step in probe.steps if step["stage"] == "pseudo_multiview"])
    occluded = _step_seconds([step for step in probe.steps if step["stage"] == "occluded"])
    first = next((i for i, step in enumerate(probe.steps) if step["stage"] == "pseudo_multiview"), 0)
    between = probe.steps[first - 1]["after_s"] if first > 0 else 0.0  # stage 2 set up between steps
    hand_over = sum(occluded) + between + tuning[0] - statistics.median(tuning[1:] or tuning) if tuning else None
    evaluation = next((c for c in callbacks if hasattr(c, "metrics")), None)
    metrics = (evaluation.metrics or {}) if evaluation is not None else {}
    return {
        "device": probe.device,
        "torch": torch.__version__,
        "precision": precision,
        "compile": args.compile,
        "generator": args.generator,
        "stages": stages,
        "estimate_step_s": stages.get("estimate", {}).get("median_step_s"),
        "pseudo_multiview_step_s": stages.get("pseudo_multiview", {}).get("median_step_s"),
        "hand_over_s": hand_over,
        "occluded_step_s": stages.get("occluded", {}).get("median_step_s"),
        "pseudo_view_build_s": hand_over - sum(occluded) if hand_over is not None and occluded else None,
        "eval_s": metrics.get("eval_seconds"),
        "total_s": total,
        "peak_gpu_memory_mb": max((s["memory_mb"] for s in probe.steps if s["memory_mb"] is not None), default=None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "num_views": args.num_views,
        "occluded_steps": args.occluded_steps,
        "poisson_iterations": args.poisson_iterations,
    }


def _measure_commit(ref: str, argv: list[str]) -> list[dict[str, Any]]:
    """This script's measurements of commit ``ref`` (a temporary worktree, this interpreter)."""
    with tempfile.TemporaryDirectory() as parent:
        tree = Path(parent) / "tree"
        add = ["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(tree), ref]
        subprocess.run(add, check=True, stdout=subprocess.DEVNULL)
        try:
            # pyproject's package-dir ships callbacks/ and configs/ as hfgi3d.callbacks and
            # hfgi3d.configs; on PYTHONPATH the worktree needs them where the package looks.
            for name in ("callbacks", "configs"):
                if (tree / name).is_dir() and not (tree / "hfgi3d" / name).exists():
                    (tree / "hfgi3d" / name).symlink_to(tree / name, target_is_directory=True)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            command = [sys.executable, str(SCRIPT), *argv, "--child"]
            result = subprocess.run(command, cwd=tree, env=env, check=False, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"measuring {ref} failed:\n{result.stderr[-3000:]}")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _ratios(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """old / new of the per-stage step times and FLOPs (> 1: this commit is faster / does less)."""
    ratios: dict[str, Any] = {}
    for stage in ("estimate", "pseudo_multiview"):
        a, b = old["stages"].get(stage), new["stages"].get(stage)
        if a and b:
            ratios[f"{stage}_step_speedup"] = a["median_step_s"] / b["median_step_s"]
            if a["flops_per_step"] and b["flops_per_step"]:
                ratios[f"{stage}_flops_ratio"] = b["flops_per_step"] / a["flops_per_step"]
    if old.get("hand_over_s") and new.get("hand_over_s"):
        ratios["hand_over_speedup"] = old["hand_over_s"] / new["hand_over_s"]
    return ratios


def _paper_schedule_s(run: dict[str, Any]) -> float | None:
    """Seconds of the paper preset's whole schedule (its step counts, from ``configs/hfgi3d.yaml``)
    projected from ``run``'s median step times and its pseudo-view construction (at the run's
    ``--num-views`` and ``--poisson-iterations``: 16 and 2000 are the preset's); ``None`` for
    commits without the ``occluded`` stage, whose first stage-2 step holds the ``w_o`` fit."""
    from hfgi3d.presets import load_preset  # this checkout's preset

    if run.get("occluded_step_s") is None or run.get("pseudo_view_build_s") is None:
        return None
    model = load_preset("hfgi3d.yaml")["model"]
    return (
        model["estimate"]["steps"] * run["estimate_step_s"]
        + model["occluded"]["steps"] * run["occluded_step_s"]
        + run["pseudo_view_build_s"]
        + model["pseudo_multiview"]["steps"] * run["pseudo_multiview_step_s"]
    )


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without ``options`` and their values."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            kept.append(arg)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default=None, help="default: the FFHQ-512 architecture, random weights")
    parser.add_argument("--estimate-steps", type=int, default=50)
    parser.add_argument("--pseudo-multiview-steps", type=int, default=50)
    parser.add_argument("--occluded-steps", type=int, default=200)
    parser.add_argument("--num-views", type=int, default=16)
    parser.add_argument("--poisson-iterations", type=int, default=2000)
    parser.add_argument("--w-avg-samples", type=int, default=600)
    parser.add_argument("--accelerator", default=None, help="Lightning accelerator (default: from --device)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="cpu or cuda (default: auto)")
    parser.add_argument("--precision", nargs="+", default=["32-true"], help="Lightning precisions, e.g. bf16-mixed")
    parser.add_argument("--compile", default="none", help="model.compile mode (commits that have it)")
    parser.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True, help="count FLOPs")
    parser.add_argument("--evaluation", action="store_true", help="also run and time the evaluation")
    parser.add_argument("--lpips-weights-vgg", default=None)
    parser.add_argument("--lpips-weights-alex", default=None)
    parser.add_argument("--against", default=None, metavar="GITREF", help="also measure this commit and compare")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.child:
        # The measured commit's hfgi3d only: the editable install would lend it this checkout's
        # modules where that commit has none.
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    if args.generator is None:
        from hfgi3d.presets import preset_path

        args.generator = str(preset_path("generator/ffhq512.yaml"))
    if args.accelerator is None:
        args.accelerator = {"cpu": "cpu", "cuda": "gpu", None: "auto"}[args.device]
    results = [measure(args, precision) for precision in args.precision]
    if args.child:  # one JSON line each, read by the parent
        for result in results:
            print(json.dumps(result))
        return
    for result in results:
        result["paper_schedule_s"] = _paper_schedule_s(result)
    report: dict[str, Any] = {"command": "python benchmarks/inversion_speed.py " + " ".join(argv), "runs": results}
    if args.against:
        child_argv = [*_without(argv, ("--against", "--out", "--generator")), "--generator", args.generator]
        with contextlib.redirect_stdout(sys.stderr):
            old = _measure_commit(args.against, child_argv)
        report["against"] = {"ref": args.against, "runs": old}
        report["ratios_vs_against"] = {
            f"{new['precision']} vs {ref['precision']}": _ratios(ref, new) for new in results for ref in old
        }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        from hfgi3d.io import write_json_atomic  # this checkout's (a measured old commit may predate it)

        write_json_atomic(args.out, report)


if __name__ == "__main__":
    main()
