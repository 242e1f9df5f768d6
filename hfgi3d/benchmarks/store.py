"""Results of a benchmark: JSON lines appended one per finished (image, method), per process.

Convention:
    A benchmark folder holds ``results.rank<r>.jsonl`` (one file per process, so processes never
    write to the same file) and, once merged, ``results.jsonl``. A row is one JSON object on one
    line with at least ``image_id`` and ``method``. A row is appended with a single ``write`` on
    a file opened for appending, then flushed to disk (``fsync``): a crash can at worst leave a
    last line without its newline, which readers ignore and the next append removes (that job is
    simply run again). Each file has a single writer (its process).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hfgi3d.io import write_bytes_atomic

RANK_FILE = "results.rank{rank}.jsonl"
MERGED_FILE = "results.jsonl"


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row["image_id"]), str(row["method"])


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def _drop_cut_line(path: Path) -> None:
    """Truncate a last line that a crash left without its newline (the file has a single writer)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row as a single line and flush it to disk (see the module docstring)."""
    line = (json.dumps(_clean(row), allow_nan=False, sort_keys=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_cut_line(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSONL file; a last line cut short by a crash is ignored."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        complete = number < len(lines)  # every complete line is followed by "\n"
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if complete:
                raise ValueError(f"{path}:{number} is not a JSON row ({error}); fix or delete that line") from error
    return rows


def rank_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(RANK_FILE.format(rank="*")))


def finished(folder: Path, include_errors: bool = True) -> set[tuple[str, str]]:
    """``(image_id, method)`` of every row any process has written (and of the merged file).

    With ``include_errors=False`` rows that hold an ``error`` do not count (they are run again).
    """
    rows = [row for path in [*rank_files(folder), folder / MERGED_FILE] for row in read_rows(path)]
    return {row_key(row) for row in rows if include_errors or "error" not in row}


def merge(folder: Path, order: Iterable[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Merge every rank file (and an earlier merge) into ``results.jsonl``, one row per key.

    Rows follow ``order`` (the job list) where given, then the rest sorted by key. The merged file
    is written atomically (:mod:`hfgi3d.io`), so it is never half-written.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in [folder / MERGED_FILE, *rank_files(folder)]:
        for row in read_rows(path):
            key = row_key(row)
            if key not in rows or "error" in rows[key]:  # a later success replaces an error row
                rows[key] = row
    keys = [key for key in (order or []) if key in rows]
    keys += sorted(set(rows) - set(keys))
    merged = [rows[key] for key in keys]
    write_bytes_atomic(folder / MERGED_FILE, "".join(json.dumps(row) + "\n" for row in merged).encode("utf-8"))
    return merged
