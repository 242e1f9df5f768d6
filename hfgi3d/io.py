"""Files: listing a command's inputs, and writing results atomically.

This module imports only the standard library, so the command line can check its inputs before
the models load. Every file hfgi3d writes goes through :func:`atomic_path`: the content is written to a hidden
temporary sibling (same folder, so the final rename cannot cross file systems), which then
replaces the target in one ``os.replace``. If writing fails the temporary file is removed and
the target is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hfgi3d.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")
"""Extensions ``preprocess`` reads from an input folder (case-insensitive); a single file is always tried."""


def list_inputs(input_path: Path) -> list[Path]:
    """The photo, or the files of the folder (sorted, hidden files left out; not recursive).

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        InputError: ``input_path`` is a folder without files.
    """
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise FileNotFoundError(f"input not found: {input_path}: pass a photo or a folder of photos")
    files = sorted(path for path in input_path.iterdir() if path.is_file() and not path.name.startswith("."))
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise InputError(f"{input_path} holds no files: pass a photo or a folder of photos ({suffixes})")
    return files


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    The temporary name keeps ``path``'s suffix last (``.mesh.3f2a….tmp.glb``), so writers that
    pick a format from the extension (imageio, pillow, trimesh) behave as for ``path``; it is
    unique per call, so concurrent writers of one file cannot collide.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        # open(), unlike mkstemp, honours the umask; "x" refuses to follow a planted file.
        with open(temporary, "xb") as stream:
            stream.write(data)


def write_json_atomic(path: str | os.PathLike[str], content: Any, indent: int = 2) -> None:
    """Write ``content`` as JSON (no NaN or infinity: they are not JSON) atomically."""
    text = json.dumps(content, indent=indent, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a file, or ``None`` for a spec that is no file (``tiny``, a .yaml config)."""
    path = Path(path)
    if not path.is_file() or path.suffix in (".yaml", ".yml"):
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
