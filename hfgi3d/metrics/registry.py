"""Every number a run or a benchmark reports, in one table: key, family, what it measures, tables.

:func:`hfgi3d.metrics.evaluation.evaluate` computes the families of :data:`EVALUATED` (one function
per family, :data:`hfgi3d.metrics.evaluation.FAMILY_FUNCTIONS`) and returns their keys in this
order; the evaluation callback writes them to ``metrics.json``, logs them as ``eval/<key>`` (W&B
included) and names the families in its status line; the benchmark tables show the keys whose
``tables`` name them, in this order. The ``ground truth`` family is scored by the synthetic
benchmark (:mod:`hfgi3d.benchmarks.synthetic`), the ``run`` family by the callback.

A new metric is an entry here and the line of its family's function that computes it (a new
family: one more function in ``FAMILY_FUNCTIONS``).

This module imports nothing heavy: the benchmark tables read it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

CELEBA = "celeba"
"""The CelebA-HQ benchmark's table (the paper's protocol)."""
SYNTHETIC = "synthetic"
"""The ground-truth (synthetic) benchmark's table."""

GROUND_TRUTH = "ground truth"
RUN = "run"


@dataclass(frozen=True)
class Metric:
    """One reported number.

    Args:
        key: its name in ``metrics.json``, the logs (``eval/<key>``) and the benchmark rows.
        family: the metrics computed together (and skipped together when a network is missing).
        summary: what it measures, one line.
        tables: the benchmark tables that show it (:data:`CELEBA`, :data:`SYNTHETIC`).
    """

    key: str
    family: str
    summary: str
    tables: tuple[str, ...] = ()


BOTH = (CELEBA, SYNTHETIC)

METRICS: tuple[Metric, ...] = (
    Metric("novel_psnr", GROUND_TRUTH, "PSNR (dB) of 5 novel views against the true generator's", (SYNTHETIC,)),
    Metric("novel_ssim", GROUND_TRUTH, "SSIM of the same novel views", (SYNTHETIC,)),
    Metric("novel_lpips", GROUND_TRUTH, "LPIPS (AlexNet) of the same novel views", (SYNTHETIC,)),
    Metric("paint_psnr", GROUND_TRUTH, "PSNR (dB) of the novel views inside the painted detail", (SYNTHETIC,)),
    Metric("paint_coverage", GROUND_TRUTH, "share of the novel views' pixels that show the painted detail"),
    Metric("psnr", "input view", "PSNR (dB) of the render at the input camera against the photo", BOTH),
    Metric("ssim", "input view", "SSIM at the input camera", BOTH),
    Metric("ms_ssim", "input view", "MS-SSIM at the input camera (images of 161 px or more)", (CELEBA,)),
    Metric("lpips_alex", "input view", "LPIPS (AlexNet) at the input camera", BOTH),
    Metric("lpips_vgg", "input view", "LPIPS (VGG) at the input camera", (CELEBA,)),
    Metric("id_arcface", "ArcFace identity", "ArcFace cosine between the photo and random novel views", (CELEBA,)),
    Metric("id_facenet", "FaceNet identity", "FaceNet (VGGFace2) cosine, the same views"),
    Metric("ibrnet_psnr", "IBRNet consistency", "PSNR (dB) of IBRNet's input view from 5 renders", (CELEBA,)),
    Metric("ibrnet_ssim", "IBRNet consistency", "SSIM of IBRNet's input view", (CELEBA,)),
    Metric("ibrnet_lpips", "IBRNet consistency", "LPIPS (AlexNet) of IBRNet's input view", (CELEBA,)),
    Metric("warp_psnr", "warp consistency", "PSNR (dB) of 5 renders warped into the input view by depth", BOTH),
    Metric("warp_lpips", "warp consistency", "LPIPS (AlexNet) of the warped renders", BOTH),
    Metric("warp_coverage", "warp consistency", "share of the input view the warped renders cover"),
    Metric("pose_error", "pose error", "L2 (rad) between the novel cameras' yaw/pitch and the estimated ones"),
    Metric("seconds", RUN, "wall time of the fit (a batch's time, shared by its photos)", BOTH),
    Metric("eval_seconds", RUN, "wall time of the final evaluation"),
    Metric("steps", RUN, "optimization steps of the fit"),
    Metric("peak_gpu_memory_mb", RUN, "peak GPU memory allocated during the fit (MiB)", BOTH),
)
"""Every metric, in table order."""

EVALUATED = tuple(metric.key for metric in METRICS if metric.family not in (GROUND_TRUTH, RUN))
"""The keys :func:`hfgi3d.metrics.evaluation.evaluate` returns, in table order."""
RUN_KEYS = tuple(metric.key for metric in METRICS if metric.family == RUN)
"""Run statistics the evaluation callback stores and logs next to the metrics."""


def family_of(key: str) -> str:
    return next(metric.family for metric in METRICS if metric.key == key)


def families(keys: tuple[str, ...] = EVALUATED) -> dict[str, tuple[str, ...]]:
    """Family → its keys among ``keys``, in table order."""
    grouped: dict[str, tuple[str, ...]] = {}
    for metric in METRICS:
        if metric.key in keys:
            grouped[metric.family] = (*grouped.get(metric.family, ()), metric.key)
    return grouped


def table_columns(table: str) -> tuple[str, ...]:
    """The columns of benchmark table ``table`` (:data:`CELEBA` or :data:`SYNTHETIC`), in order."""
    return tuple(metric.key for metric in METRICS if table in metric.tables)
