"""Benchmark runner: JSONL store, aggregation, resume after a killed run, 2-process sharding."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfgi3d.benchmarks.__main__ import current_spellings
from hfgi3d.benchmarks.__main__ import main as benchmarks_main
from hfgi3d.benchmarks.aggregate import markdown_table, summarize
from hfgi3d.benchmarks.runner import Job, Photo, Worker, batches, run_fit, run_shard, shard
from hfgi3d.benchmarks.store import MERGED_FILE, append_row, finished, merge, read_rows

REPO = Path(__file__).resolve().parents[1]
MICRO_PROFILE = """
model: {generator: tiny, w_avg_samples: 16, estimate: {steps: 4, lr: 0.01}, occluded: {steps: 2, lr: 0.01},
        pseudo_multiview: {steps: 4, lr: 0.01}, loss: {lpips_resize: null, lambda_lpips: 0.0}}
data: {num_views: 2, pseudo_views: {poisson_iterations: 20}}
outputs: {orbit_frames: 0, mesh_resolution: 0, grid_size: [2, 1]}
evaluation: {every_n_steps: 0}
trainer: {accelerator: cpu, log_every_n_steps: 4, callbacks: []}
"""
TOLERANCE_BATCHED = 1e-4  # measured: 2.6e-6
NUMBER_KEYS = ("novel_psnr", "novel_ssim", "novel_lpips", "psnr", "ssim", "lpips_alex", "warp_psnr")


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "micro.yaml"
    path.write_text(MICRO_PROFILE)
    return path


def test_store_appends_skips_a_cut_last_line_and_merges(tmp_path: Path) -> None:
    append_row(tmp_path / "results.rank0.jsonl", {"image_id": "a", "method": "m", "psnr": 1.0})
    append_row(tmp_path / "results.rank1.jsonl", {"image_id": "b", "method": "m", "psnr": float("nan")})
    append_row(tmp_path / "results.rank1.jsonl", {"image_id": "c", "method": "m", "error": "ValueError: x"})
    with (tmp_path / "results.rank0.jsonl").open("a") as handle:
        handle.write('{"image_id": "d", "method": "m", "ps')  # a crash in the middle of a line
    assert finished(tmp_path) == {("a", "m"), ("b", "m"), ("c", "m")}
    assert finished(tmp_path, include_errors=False) == {("a", "m"), ("b", "m")}
    rows = merge(tmp_path, [("c", "m"), ("b", "m"), ("a", "m")])
    assert [row["image_id"] for row in rows] == ["c", "b", "a"]
    assert rows[1]["psnr"] is None  # NaN is stored as null
    assert read_rows(tmp_path / MERGED_FILE) == rows
    append_row(tmp_path / "results.rank0.jsonl", {"image_id": "c", "method": "m", "psnr": 2.0})  # retried
    assert [row for row in merge(tmp_path) if row["image_id"] == "c"] == [{"image_id": "c", "method": "m", "psnr": 2.0}]


def test_the_former_dash_spellings_are_still_read() -> None:
    """Committed results record their commands as they were run, with ``--out`` and dashes."""
    old = ["synthetic", "--out", "x", "--keep-generators", "--batch-size=2", "--images", "3", "--retry-errors"]
    assert current_spellings(old) == [
        "synthetic", "--output_dir", "x", "--keep_generators", "--batch_size=2", "--images", "3", "--retry_errors",
    ]  # fmt: skip


def test_a_bad_command_line_gets_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["synthetic"], "the following arguments are required: --output_dir"),
        (["synthetic", "--output_dir", "x", "--methods", "nope"], "invalid choice: 'nope'"),
        (["celeba", "--images", "many"], "invalid int value: 'many'"),
    ):
        code = benchmarks_main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert "--help`)" in err and "usage:" not in err


def test_shard_keeps_an_image_in_one_process() -> None:
    jobs = [Job(image, method) for image in "abcde" for method in ("x", "y")]
    shards = [shard(jobs, rank, 2) for rank in range(2)]
    assert sorted(job.key for part in shards for job in part) == sorted(job.key for job in jobs)
    assert {job.image_id for job in shards[0]} == {"a", "c", "e"} and {job.image_id for job in shards[1]} == {"b", "d"}


def test_batches_of_one_method_and_a_rerun_does_only_the_unfinished_photos(tmp_path: Path) -> None:
    """``--batch_size 2``: photos are grouped per method; after a kill only the photos without a row run
    again, re-batched, and a failed batch gives every photo of it an error row."""
    jobs = [Job(f"img{i}", method) for method in ("pti", "hfgi3d") for i in range(3)]
    calls: list[list[tuple[str, str]]] = []

    def job_fn(batch: list[Job], worker: Worker) -> list[dict[str, float]]:
        calls.append([job.key for job in batch])
        if batch[0].key == ("img2", "hfgi3d"):
            raise RuntimeError("the fit broke")
        return [{"psnr": float(len(calls))} for _ in batch]

    worker = Worker(0, 1, "cpu", 0)
    append_row(tmp_path / "results.rank0.jsonl", {"image_id": "img0", "method": "pti", "psnr": 1.0})  # before a kill
    assert run_shard(jobs, tmp_path, worker, job_fn, batch_size=2) == 5
    assert calls == [
        [("img1", "pti"), ("img2", "pti")],
        [("img0", "hfgi3d"), ("img1", "hfgi3d")],
        [("img2", "hfgi3d")],
    ]
    rows = {(r["image_id"], r["method"]): r for r in read_rows(tmp_path / "results.rank0.jsonl")}
    assert len(rows) == 6 and rows[("img2", "hfgi3d")]["error"] == "RuntimeError: the fit broke"
    assert rows[("img1", "pti")]["batch_size"] == 2 and rows[("img2", "hfgi3d")]["batch_size"] == 1
    calls.clear()
    assert run_shard(jobs, tmp_path, worker, job_fn, batch_size=2, retry_errors=True) == 1  # only the failure
    assert calls == [[("img2", "hfgi3d")]]


@pytest.mark.parametrize("code", [130, 143], ids=["Ctrl-C", "SIGTERM"])
def test_an_interrupted_fit_stops_the_benchmark_without_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A fit stopped by Ctrl-C or SIGTERM (it returns 130 / 143) stops the benchmark and leaves no row, so
    a resumed benchmark runs that job again instead of skipping it as failed."""
    monkeypatch.setattr("hfgi3d.fit.main", lambda args: code)
    photo = Photo(tmp_path / "a.png", tmp_path / "a.json", tmp_path / "runs" / "pti" / "a")

    def job_fn(batch: list[Job], worker: Worker) -> list[dict[str, Any]]:
        return run_fit(batch, worker, "tiny", None, [photo])

    jobs = [Job("a", "pti", {"presets": []}), Job("b", "pti", {"presets": []})]
    with pytest.raises(KeyboardInterrupt, match="the fit of pti/a was interrupted"):
        run_shard(jobs, tmp_path, Worker(0, 1, "cpu", 0), job_fn)
    assert not (tmp_path / "results.rank0.jsonl").exists()


def test_one_job_per_batch_runs_image_by_image() -> None:
    """A benchmark stopped part-way has every method of the images it finished (paired rows)."""
    jobs = [Job(image, method) for image in ("a", "b") for method in ("pti", "hfgi3d", "no_occluded")]
    assert [job.key for batch in batches(jobs, 1) for job in batch] == [job.key for job in jobs]
    assert [[job.key for job in batch] for batch in batches(jobs, 2)] == [
        [("a", "pti"), ("b", "pti")],
        [("a", "hfgi3d"), ("b", "hfgi3d")],
        [("a", "no_occluded"), ("b", "no_occluded")],
    ]


def test_summary_is_mean_and_std_next_to_the_paper() -> None:
    rows = [
        {"image_id": "a", "method": "hfgi3d", "psnr": 30.0, "id_arcface": None},
        {"image_id": "b", "method": "hfgi3d", "psnr": 28.0, "id_arcface": 0.5},
        {"image_id": "a", "method": "pti", "psnr": 25.0},
    ]
    summary = summarize(rows, ["psnr", "id_arcface", "ibrnet_psnr"])
    assert summary["hfgi3d"]["psnr"] == (29.0, 1.0, 2)
    assert summary["hfgi3d"]["id_arcface"] == (0.5, 0.0, 1)
    table = markdown_table(summary, ["psnr", "id_arcface", "ibrnet_psnr"])
    assert "| hfgi3d | 2 | 29 ± 1 | 0.5 ± 0 (n=1) |" in table
    assert "| paper: hfgi3d | 1500 | 29.43 | 0.744 |" in table and "| paper: pti | 1500 | 26.64 | 0.657 |" in table
    assert "ibrnet_psnr" not in table  # no row has it


def test_times_are_averaged_over_rows_that_ran_with_the_same_threads() -> None:
    rows = [
        {"method": "pti", "psnr": 20.0, "seconds": 300.0, "cpu_threads": 2},
        {"method": "pti", "psnr": 22.0, "seconds": 280.0, "cpu_threads": 2},
        {"method": "pti", "psnr": 24.0, "seconds": 540.0, "cpu_threads": 1},
    ]
    summary = summarize(rows, ["psnr", "seconds"])
    assert summary["pti"]["psnr"] == (22.0, pytest.approx(1.633, abs=1e-3), 3)
    assert summary["pti"]["seconds"] == (290.0, 10.0, 2) and summary["pti"]["threads"] == 2
    assert "| pti | 3 | 22 ± 1.6 | 290 ± 10 (n=2, 2 threads) |" in markdown_table(summary, ["psnr", "seconds"])


def _synthetic_args(out: Path, profile: Path, *extra: str) -> list[str]:
    return ["synthetic", "--output_dir", str(out), "--images", "2", "--methods", "pti",
            "--profile", str(profile), *extra]  # fmt: skip


@pytest.mark.slow  # two processes of two fits each; sharding itself is tested above without fits
def test_two_cpu_processes_produce_the_rows_of_one(tmp_path: Path, profile: Path) -> None:
    """Sharded over 2 gloo processes, every (image, method) row is the one a single process makes.

    Both runs use one thread per process (Lightning gives each of N CPU processes 1/N of the
    cores), so their floating-point sums are done in the same order and the rows agree exactly.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for out, extra in ((one, ()), (two, ("--devices", "2"))):
        command = [sys.executable, "-m", "hfgi3d.benchmarks", *_synthetic_args(out, profile, *extra)]
        subprocess.run(command, check=True, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert {path.name for path in two.glob("results.rank*.jsonl")} == {"results.rank0.jsonl", "results.rank1.jsonl"}
    rows_one, rows_two = read_rows(one / MERGED_FILE), read_rows(two / MERGED_FILE)
    assert [(r["image_id"], r["method"]) for r in rows_one] == [(r["image_id"], r["method"]) for r in rows_two]
    assert {r["rank"] for r in rows_one} == {0} and {r["rank"] for r in rows_two} == {0, 1}
    for a, b in zip(rows_one, rows_two, strict=True):
        assert "error" not in a and "error" not in b, (a.get("error"), b.get("error"))
        for key in NUMBER_KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert "| pti | 2 |" in (two / "summary.md").read_text()


def test_a_killed_run_resumes_without_redoing_finished_jobs(tmp_path: Path, profile: Path) -> None:
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "hfgi3d.benchmarks", *_synthetic_args(out, profile)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.rank0.jsonl"
    deadline = time.monotonic() + 300
    while not (results.is_file() and results.read_text().count("\n") >= 1):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = read_rows(results)
    assert len(first) == 1 and not (out / MERGED_FILE).exists()
    assert benchmarks_main(_synthetic_args(out, profile)) == 0
    rows = read_rows(out / MERGED_FILE)
    assert [r["image_id"] for r in rows] == ["synthetic_0000", "synthetic_0001"]
    assert rows[0] == first[0]  # the finished job was kept, not run again
    assert len(read_rows(results)) == 2
    assert all("error" not in row for row in rows)


@pytest.mark.slow  # batched fits; tests/test_batch.py covers the batch itself
def test_a_batched_run_gives_every_photo_its_row(tmp_path: Path, profile: Path) -> None:
    """``--batch_size 2``: both photos in one fit (``fit --data.images``), a row each, with the numbers
    one photo per fit gives (to rounding: the batched stage 2 rounds differently, tests/test_batch.py)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert benchmarks_main(_synthetic_args(one, profile)) == 0
    assert benchmarks_main(_synthetic_args(two, profile, "--batch_size", "2")) == 0
    rows_one, rows_two = read_rows(one / MERGED_FILE), read_rows(two / MERGED_FILE)
    assert [(r["image_id"], r["method"]) for r in rows_two] == [(r["image_id"], r["method"]) for r in rows_one]
    assert [r["batch_size"] for r in rows_two] == [2, 2] and [r["batch_size"] for r in rows_one] == [1, 1]
    for a, b in zip(rows_one, rows_two, strict=True):
        assert "error" not in a and "error" not in b, (a.get("error"), b.get("error"))
        for key in NUMBER_KEYS:
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE_BATCHED), key
    assert (two / "runs" / "pti" / "batch_synthetic_0000" / "synthetic_0001" / "metrics.json").is_file()


def test_celeba_without_data_or_weights_explains_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = benchmarks_main(
        ["celeba", "--output_dir", str(tmp_path), "--data", str(tmp_path / "nowhere"), "--generator", "x"]
    )
    assert code == 2
    message = capsys.readouterr().err
    assert "HFGI3D_CELEBAHQ" in message and "ffhq512-128.pkl" in message and "HFGI3D_EG3D" in message


def test_celeba_aligns_inverts_and_records_failures_per_image(tmp_path: Path, profile: Path) -> None:
    """A 2-photo 'CelebA-HQ' folder: the face is aligned and inverted, the faceless photo is an error row."""
    import skimage.data
    from PIL import Image

    from hfgi3d.generator import open_generator, save_generator

    data = tmp_path / "celeba"
    data.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(data / "00001.jpg")
    Image.fromarray(skimage.data.coffee()).save(data / "00002.jpg")
    generator = tmp_path / "tiny.pt"
    save_generator(open_generator("tiny"), generator)
    out = tmp_path / "bench"
    args = ["celeba", "--output_dir", str(out), "--data", str(data), "--generator", str(generator), "--images", "2",
            "--methods", "pti", "--profile", str(profile)]  # fmt: skip
    assert benchmarks_main(args) == 0
    listed = (out / "images.txt").read_text().splitlines()
    assert listed[0].startswith("# 2 images sampled with random.Random(0)") and sorted(listed[1:]) == [
        "00001.jpg",
        "00002.jpg",
    ]
    rows = {row["image_id"]: row for row in read_rows(out / MERGED_FILE)}
    assert set(rows) == {"00001", "00002"}
    assert "error" not in rows["00001"] and rows["00001"]["psnr"] > 0 and rows["00001"]["steps"] == 8
    assert (out / "aligned" / "00001" / "dataset.json").is_file()
    assert "no_face" in rows["00002"]["error"] or "no face" in rows["00002"]["error"].lower()
    summary = (out / "summary.md").read_text()
    assert "| pti | 1 |" in summary and "| paper: pti | 1500 | 26.64" in summary and "1 job(s) failed" in summary


@pytest.mark.slow  # a benchmark script, timed fits
def test_inversion_speed_reports_every_stage_and_projects_the_paper_schedule(tmp_path: Path) -> None:
    # the speed script end to end on the tiny generator (its figures are in benchmarks/README.md)
    out = tmp_path / "speed.json"
    command = [
        sys.executable, str(REPO / "benchmarks" / "inversion_speed.py"), "--generator", "tiny",
        "--estimate-steps", "3", "--occluded-steps", "3", "--pseudo-multiview-steps", "3", "--num-views", "2",
        "--poisson-iterations", "10", "--w-avg-samples", "16", "--device", "cpu", "--no-flops", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    (run,) = json.loads(out.read_text())["runs"]
    assert set(run["stages"]) == {"estimate", "occluded", "pseudo_multiview"}
    assert run["stages"]["pseudo_multiview"]["vgg_images_per_step"] == 3  # the photo's features are cached
    assert run["occluded_step_s"] > 0 and run["pseudo_view_build_s"] is not None
    expected = 1000 * run["estimate_step_s"] + 200 * run["occluded_step_s"] + run["pseudo_view_build_s"]
    expected += 3000 * run["pseudo_multiview_step_s"]
    assert run["paper_schedule_s"] == pytest.approx(expected)


def _curves_benchmark(out: Path, profile: Path, images: int) -> list[dict[str, Any]]:
    """PTI and hfgi3d on ``images`` bold-painted ground-truth images, truth curves every 2 steps, the tuned
    generators kept; the merged rows."""
    args = [
        "synthetic",
        "--output_dir",
        str(out),
        "--images",
        str(images),
        "--methods",
        "pti",
        "hfgi3d",
        "--profile",
        str(profile),
        "--curves",
        "2",
        "--paint",
        "bold",
        "--precision",
        "32-true",
        "--seed",
        "1",
        "--keep_generators",
    ]  # fmt: skip (hfgi3d's bf16 is slow on a CPU)
    assert benchmarks_main(args) == 0
    rows = read_rows(out / MERGED_FILE)
    assert len(rows) == 2 * images and all("error" not in row for row in rows)
    return rows


def test_ground_truth_curves_follow_the_fit(tmp_path: Path) -> None:
    """``--curves 2``: every run's metrics.csv holds truth/* every 2 steps and at each stage's end; at the
    last step they are the numbers the run is scored with (the same weights, rendered deterministically
    by another path: float32 rounding moves a PSNR by far less than 0.01 dB)."""
    short = tmp_path / "short.yaml"  # the micro profile with 2 steps per stage
    short.write_text(MICRO_PROFILE.replace("{steps: 4,", "{steps: 2,"))
    out = tmp_path / "bench"
    for row in _curves_benchmark(out, short, images=1):
        run = out / "runs" / row["method"] / row["image_id"]
        (metrics_csv,) = run.rglob("metrics.csv")
        with metrics_csv.open() as handle:
            logged = [line for line in csv.DictReader(handle) if line.get("truth/novel_psnr")]
        # hfgi3d 2 + 2 + 2 steps, pti 2 + 2: every stage ends on an even step
        assert [int(line["step"]) for line in logged] == list(range(2, row["steps"] + 1, 2))
        assert row["steps"] == (6 if row["method"] == "hfgi3d" else 4)
        last = logged[-1]
        assert float(last["truth/novel_psnr"]) == pytest.approx(row["novel_psnr"], abs=0.01)
        assert float(last["truth/paint_psnr"]) == pytest.approx(row["paint_psnr"], abs=0.01)
        assert float(last["truth/input_psnr"]) == pytest.approx(row["psnr"], abs=0.01)
        assert (run / "novel_vs_truth.png").is_file() and (run / "generator.pt").is_file()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["seed"] == 1  # the generator the images were made with (--seed 1)


@pytest.mark.slow
def test_the_ground_truth_figures_and_the_editability_table_are_drawn(tmp_path: Path, profile: Path) -> None:
    """The figure script draws the curves, the side-by-side picture and the paired table of a finished
    ground-truth benchmark; the editability script edits its kept generators."""
    out = tmp_path / "bench"
    _curves_benchmark(out, profile, images=2)
    command = [sys.executable, "benchmarks/groundtruth_figures.py", str(out), "--images", "2"]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=300)
    for name in ("curves.png", "side_by_side.png"):
        assert (out / name).stat().st_size > 0, name
    paired = (out / "paired.md").read_text()
    assert "### Against pti" in paired and "| hfgi3d | 2 |" in paired
    command = [sys.executable, "benchmarks/groundtruth_editability.py", str(out), "--samples", "40", "--top", "10"]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=300)
    table = (out / "editability.md").read_text()
    for row in ("| truth (true latent, original generator) | 2 |", "| pti | 2 |", "| hfgi3d stage 1 | 2 |"):
        assert row in table, table
    record = json.loads((out / "editability.json").read_text())
    assert set(record["changes"]) == {"pti", "hfgi3d", "pti stage 1", "hfgi3d stage 1"}
    assert all(abs(change) > 0 for change in record["truth"].values())
