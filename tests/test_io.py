"""Atomic writes: the target appears whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfgi3d.io import atomic_path, write_bytes_atomic, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def write_half() -> None:
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half()
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_the_temporary_keeps_the_suffix_and_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "orbit.mp4"
    with atomic_path(target) as temporary:
        assert temporary.suffix == ".mp4" and temporary.parent == tmp_path and temporary.name.startswith(".")
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_json_and_bytes(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"psnr": 20.5})
    assert json.loads((tmp_path / "a.json").read_text()) == {"psnr": 20.5}
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json_atomic(tmp_path / "b.json", {"psnr": float("nan")})
    assert not (tmp_path / "b.json").exists()
    write_bytes_atomic(tmp_path / "c.bin", b"\x00\x01")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
