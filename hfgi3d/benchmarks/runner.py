"""Run benchmark jobs (one inversion per image and method): resumable, sharded over processes.

Sharding uses Lightning's own launcher: ``Fabric(strategy="ddp", devices=N, num_nodes=M).launch``
starts one process per device (NCCL on GPUs, gloo on CPUs). Each process takes every
``world_size``-th image (all methods of an image stay in one process), runs its jobs with a
single-device ``Trainer`` of its own, and appends its rows to ``results.rank<r>.jsonl``
(:mod:`hfgi3d.benchmarks.store`). Rank 0 merges the files when every process is done. Jobs whose
row exists in any results file are skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hfgi3d.benchmarks.store import RANK_FILE, append_row, finished, merge
from hfgi3d.presets import preset_path


@dataclass(frozen=True)
class Job:
    """One inversion of a benchmark."""

    image_id: str
    method: str
    payload: dict[str, Any] = field(default_factory=dict)
    """Whatever the job function needs (paths, presets)."""

    @property
    def key(self) -> tuple[str, str]:
        return self.image_id, self.method


@dataclass(frozen=True)
class Worker:
    """Where a process runs its jobs."""

    rank: int
    world_size: int
    accelerator: str  # "cpu" or "gpu"
    local_rank: int

    def trainer_args(self) -> list[str]:
        """``fit`` arguments that pin the inner single-device Trainer to this process's device."""
        if self.accelerator == "gpu":
            return ["--trainer.accelerator", "gpu", "--trainer.devices", f"[{self.local_rank}]"]
        return ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]


WANDB_PRESET = "logger/wandb.yaml"


def run_fit(
    job: Job,
    worker: Worker,
    generator: str,
    profile: str | None,
    image: Path,
    camera: Path,
    out: Path,
    wandb_group: str | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Invert ``image`` with the job's presets, then ``profile``, then the job's ``args``, by
    ``python -m hfgi3d fit``; returns ``metrics.json``.

    The run goes to ``out`` (replacing what a killed attempt left) on this process's device and, with
    a ``wandb_group``, logs to that W&B group as ``<method>/<image id>``.
    """
    from hfgi3d.fit import main as fit_main

    args = ["fit"]
    for config in [*job.payload["presets"], *([profile] if profile else [])]:
        args += ["--config", config]
    args += [
        "--model.generator", generator, "--data.image", str(image), "--data.camera", str(camera),
        "--output_dir", str(out), "--overwrite", "--trainer.enable_progress_bar", "false",
        *worker.trainer_args(), *job.payload.get("args", []), *extra,
    ]  # fmt: skip
    if wandb_group:
        args += [
            "--config", str(preset_path(WANDB_PRESET)), "--trainer.logger.init_args.group", wandb_group,
            "--trainer.logger.init_args.name", f"{job.method}/{job.image_id}",
            "--trainer.logger.init_args.tags", f"[{job.method}]",
        ]  # fmt: skip
    fit_main(args)
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return metrics


JobFn = Callable[[Job, Worker], dict[str, Any]]
"""Runs one job and returns its row's metrics (``image_id``/``method`` are added by the runner)."""


def shard(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """The jobs of process ``rank``: every ``world_size``-th image, with all its methods."""
    images = list(dict.fromkeys(job.image_id for job in jobs))
    mine = set(images[rank::world_size])
    return [job for job in jobs if job.image_id in mine]


def run_shard(jobs: Sequence[Job], folder: Path, worker: Worker, job_fn: JobFn, retry_errors: bool = False) -> int:
    """Run this process's unfinished jobs; returns how many ran. Failures become error rows."""
    done = finished(folder, include_errors=not retry_errors)
    todo = [job for job in shard(jobs, worker.rank, worker.world_size) if job.key not in done]
    results = folder / RANK_FILE.format(rank=worker.rank)
    for job in tqdm(todo, desc=f"rank {worker.rank}", position=worker.rank, unit="job", disable=not todo):
        started = time.perf_counter()
        try:
            row = job_fn(job, worker)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # one bad image or method must not stop the benchmark
            row = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=5)}
        append_row(
            results,
            {
                "image_id": job.image_id,
                "method": job.method,
                **row,
                "job_seconds": time.perf_counter() - started,
                "rank": worker.rank,
            },
        )
    return len(todo)


def run(
    jobs: Sequence[Job],
    folder: Path,
    job_fn: JobFn,
    accelerator: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
    retry_errors: bool = False,
) -> list[dict[str, Any]]:
    """Run every unfinished job on ``devices × num_nodes`` processes; returns the merged rows (rank 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    if devices * num_nodes == 1:
        run_shard(jobs, folder, Worker(0, 1, accelerator, 0), job_fn, retry_errors)
        return merge(folder, [job.key for job in jobs])

    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")

    def main(fabric: Any) -> list[dict[str, Any]]:
        worker = Worker(fabric.global_rank, fabric.world_size, accelerator, fabric.local_rank)
        run_shard(jobs, folder, worker, job_fn, retry_errors)
        fabric.barrier()
        return merge(folder, [job.key for job in jobs]) if fabric.global_rank == 0 else []

    return fabric.launch(main)
