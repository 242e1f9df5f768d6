"""Writing result files atomically: a reader, or a crash, never sees half a file.

Every file hfgi3d writes goes through :func:`atomic_path`: the content is written to a hidden
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
