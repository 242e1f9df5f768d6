"""Mean ± std per method of benchmark rows, as Markdown and CSV, next to the paper's numbers.

Convention:
    Means and (population) standard deviations are over the rows where a metric is a number;
    ``n`` says how many. A metric no row has is left out of the table.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from typing import Any

from hfgi3d.metrics.registry import CELEBA, table_columns

CELEBA_COLUMNS = table_columns(CELEBA)
"""Columns of the CelebA-HQ table (the keys of ``metrics.json``)."""

PAPER = {
    # Xie et al., CVPR 2023, Table 1/3 (docs/method.md §9): PSNR / SSIM / LPIPS at the input view, IBRNet
    # consistency PSNR, ArcFace ID; ~5 min per image on an RTX 2080.
    "hfgi3d": {"psnr": 29.43, "ssim": 0.918, "lpips_alex": 0.172, "ibrnet_psnr": 21.69, "id_arcface": 0.744},
    "pti": {"psnr": 26.64, "ssim": 0.879, "lpips_alex": 0.271, "ibrnet_psnr": 21.20, "id_arcface": 0.657},
}
"""The paper's numbers per method, keyed like our metrics (its LPIPS is taken as AlexNet's)."""


def _numbers(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    values = [row.get(key) for row in rows]
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


TIME_COLUMNS = ("seconds", "eval_seconds")
"""Columns that depend on the CPU threads a row ran with (its ``cpu_threads``)."""


def _same_threads(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """The rows that ran with the most common ``cpu_threads`` (ties: the fewest threads; ``None``:
    a row made before the runner recorded it) and that thread count."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("cpu_threads"), []).append(row)
    threads = max(groups, key=lambda t: (len(groups[t]), t is not None, -(t or 0)))
    return groups[threads], threads


def summarize(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``method → {"n": rows, column: (mean, std, count)}`` in order of first appearance.

    Times (:data:`TIME_COLUMNS`) are averaged only over the rows that ran with the method's most
    common thread count, recorded as ``"threads"`` (``None``: not recorded)."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        methods.setdefault(str(row["method"]), []).append(row)
    summary: dict[str, dict[str, Any]] = {}
    for method, method_rows in methods.items():
        entry: dict[str, Any] = {"n": len(method_rows)}
        timed, entry["threads"] = _same_threads(method_rows)
        for column in columns:
            values = _numbers(timed if column in TIME_COLUMNS else method_rows, column)
            if values:
                entry[column] = (statistics.fmean(values), statistics.pstdev(values), len(values))
        summary[method] = entry
    return summary


def _present(summary: dict[str, dict[str, Any]], columns: Sequence[str]) -> list[str]:
    return [column for column in columns if any(column in entry for entry in summary.values())]


def markdown_table(summary: dict[str, dict[str, Any]], columns: Sequence[str], paper: bool = True) -> str:
    """One row per method (mean ± std), plus a ``paper: <method>`` row under each method the paper reports."""
    shown = _present(summary, columns)
    lines = ["| method | n | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for method, entry in summary.items():
        cells = []
        for column in shown:
            if column in entry:
                mean, std, count = entry[column]
                notes = [] if count == entry["n"] else [f"n={count}"]
                if column in TIME_COLUMNS and entry["threads"] is not None:
                    notes.append(f"{entry['threads']} thread" + ("s" if entry["threads"] != 1 else ""))
                cells.append(f"{mean:.4g} ± {std:.2g}" + (f" ({', '.join(notes)})" if notes else ""))
            else:
                cells.append("–")
        lines.append(f"| {method} | {entry['n']} | " + " | ".join(cells) + " |")
        if paper and method in PAPER:
            reference = PAPER[method]
            cells = [f"{reference[column]:.4g}" if column in reference else "" for column in shown]
            lines.append(f"| paper: {method} | 1500 | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: dict[str, dict[str, Any]], columns: Sequence[str]) -> str:
    """``method, n, <column>_mean, <column>_std, <column>_n, …``."""
    shown = _present(summary, columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "n", *[f"{c}_{s}" for c in shown for s in ("mean", "std", "n")]])
    for method, entry in summary.items():
        values: list[Any] = []
        for column in shown:
            values += list(entry[column]) if column in entry else ["", "", 0]
        writer.writerow([method, entry["n"], *values])
    return buffer.getvalue()
