"""Run benchmark jobs (one inversion per image and method): resumable, sharded over processes.

Sharding uses Lightning's own launcher: ``Fabric(strategy="ddp", devices=N, num_nodes=M).launch``
starts one process per device (NCCL on GPUs, gloo on CPUs). Each process takes every
``world_size``-th image (all methods of an image stay in one process), runs its jobs with a
single-device ``Trainer`` of its own, and appends its rows to ``results.rank<r>.jsonl``
(:mod:`hfgi3d.benchmarks.store`). Rank 0 merges the files when every process is done. Jobs whose
row exists in any results file are skipped, so a killed run resumes where it stopped.

With ``batch_size`` > 1 a process inverts its images of one method that many at a time, in one
batched fit (``fit --data.images``); each photo still gets its own row, appended when its batch
ends (a photo the fit dropped gets an error row), so a killed run reruns only the unfinished batch.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hfgi3d import run_folder
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


@dataclass(frozen=True)
class Photo:
    """One job's input and where its results go."""

    image: Path
    camera: Path
    out: Path


def run_fit(
    jobs: Sequence[Job],
    worker: Worker,
    generator: str,
    profile: str | None,
    photos: Sequence[Photo],
    wandb_group: str | None = None,
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Invert the jobs' photos (one method) with the method's presets, then ``profile``, then the
    jobs' ``args``, by ``python -m hfgi3d fit``; returns each photo's ``metrics.json`` (or
    ``{"error": ...}`` for a photo the fit dropped).

    One photo is a single-photo fit into its ``out``; several are one batched fit (``data.images``,
    a ``dataset.json`` written next to their ``out`` folders, which must share a parent: the batch's
    output folder). Runs replace what a killed attempt left, on this process's device; with a
    ``wandb_group`` they log to that W&B group as ``<method>/<image id>`` (a batch: ``<method>/<first
    image id>+``).
    """
    from hfgi3d.fit import main as fit_main

    job = jobs[0]
    args = ["fit"]
    for config in [*job.payload["presets"], *([profile] if profile else [])]:
        args += ["--config", config]
    if len(photos) == 1:
        (photo,) = photos
        inputs = ["--data.image", str(photo.image), "--data.camera", str(photo.camera), "--output_dir", str(photo.out)]
        name = f"{job.method}/{job.image_id}"
    else:
        root = photos[0].out.parent
        if any(photo.out.parent != root or photo.out.name != photo.image.stem for photo in photos):
            raise ValueError("a batch's photos must have their results in <batch folder>/<image name>")
        dataset = write_dataset(root / "dataset.json", photos)
        inputs = ["--data.image", "null", "--data.images", str(dataset), "--data.batch_size", str(len(photos))]
        inputs += ["--output_dir", str(root)]
        name = f"{job.method}/{job.image_id}+"
    args += [
        "--model.generator", generator, *inputs, "--overwrite", "--trainer.enable_progress_bar", "false",
        *worker.trainer_args(), *job.payload.get("args", []), *extra,
    ]  # fmt: skip
    if wandb_group:
        args += [
            "--config", str(preset_path(WANDB_PRESET)), "--trainer.logger.init_args.group", wandb_group,
            "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.tags", f"[{job.method}]",
        ]  # fmt: skip
    if fit_main(args) != 0:  # 130 / 143: Ctrl-C or SIGTERM stopped the fit (it saved a checkpoint)
        raise KeyboardInterrupt(f"the fit of {name} was interrupted")  # the benchmark stops; no row
    rows = []
    for photo in photos:
        if (photo.out / run_folder.FAILED).is_file():
            rows.append({"error": json.loads((photo.out / run_folder.FAILED).read_text())["error"]})
        else:
            rows.append(json.loads((photo.out / run_folder.METRICS).read_text()))
    return rows


def write_dataset(path: Path, photos: Sequence[Photo]) -> Path:
    """An EG3D ``dataset.json`` naming each photo by its absolute path, with its camera."""
    from hfgi3d.data.inputs import load_camera
    from hfgi3d.io import write_json_atomic

    labels = [[str(photo.image.resolve()), load_camera(photo.camera, photo.image)[0].tolist()] for photo in photos]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"labels": labels})
    return path


JobFn = Callable[[list[Job], Worker], list[dict[str, Any]]]
"""Runs the jobs of one batch (one method; a single job without batching) and returns each job's
row metrics, in order (``image_id``/``method`` are added by the runner)."""


def shard(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """The jobs of process ``rank``: every ``world_size``-th image, with all its methods."""
    images = list(dict.fromkeys(job.image_id for job in jobs))
    mine = set(images[rank::world_size])
    return [job for job in jobs if job.image_id in mine]


def batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """``jobs`` in batches of at most ``batch_size`` jobs of one method, each batch where its first job
    stands in ``jobs`` (one job per batch keeps the order: image by image, so that a benchmark run in
    parts has every method of the images it finished)."""
    by_method: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        by_method.setdefault(job.method, []).append(index)
    groups = [group[i : i + batch_size] for group in by_method.values() for i in range(0, len(group), batch_size)]
    return [[jobs[index] for index in group] for group in sorted(groups, key=lambda group: group[0])]


def run_shard(
    jobs: Sequence[Job], folder: Path, worker: Worker, job_fn: JobFn, retry_errors: bool = False, batch_size: int = 1
) -> int:
    """Run this process's unfinished jobs, ``batch_size`` at a time; returns how many ran. Failures
    become error rows (a failed batch: one per job)."""
    done = finished(folder, include_errors=not retry_errors)
    todo = [job for job in shard(jobs, worker.rank, worker.world_size) if job.key not in done]
    results = folder / RANK_FILE.format(rank=worker.rank)
    progress = tqdm(total=len(todo), desc=f"rank {worker.rank}", position=worker.rank, unit="job", disable=not todo)
    for batch in batches(todo, batch_size):
        started = time.perf_counter()
        try:
            rows = job_fn(batch, worker)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # one bad image or method must not stop the benchmark
            failure = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=5)}
            rows = [failure] * len(batch)
        seconds = (time.perf_counter() - started) / len(batch)  # a batch's time, shared by its photos
        for job, row in zip(batch, rows, strict=True):
            append_row(
                results,
                {
                    "image_id": job.image_id,
                    "method": job.method,
                    **row,
                    "job_seconds": seconds,
                    "batch_size": len(batch),
                    "rank": worker.rank,
                    "cpu_threads": torch.get_num_threads(),  # the seconds depend on it on a CPU
                },
            )
        progress.update(len(batch))
    progress.close()
    return len(todo)


def run(
    jobs: Sequence[Job],
    folder: Path,
    job_fn: JobFn,
    accelerator: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
    retry_errors: bool = False,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """Run every unfinished job on ``devices × num_nodes`` processes, ``batch_size`` photos per fit;
    returns the merged rows (rank 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    if devices * num_nodes == 1:
        run_shard(jobs, folder, Worker(0, 1, accelerator, 0), job_fn, retry_errors, batch_size)
        return merge(folder, [job.key for job in jobs])

    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")

    def main(fabric: Any) -> list[dict[str, Any]]:
        worker = Worker(fabric.global_rank, fabric.world_size, accelerator, fabric.local_rank)
        run_shard(jobs, folder, worker, job_fn, retry_errors, batch_size)
        fabric.barrier()
        return merge(folder, [job.key for job in jobs]) if fabric.global_rank == 0 else []

    return fabric.launch(main)
