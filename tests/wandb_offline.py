"""Read an offline W&B run back from its ``run-<id>.wandb`` file (tests only).

The file is W&B's append-only record log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version)
then LevelDB-log-style blocks of 32 KiB; each chunk has a 7-byte header (CRC32 4, length 2,
type 1: full / first / middle / last) and chunks reassemble into protobuf ``Record`` messages
(``wandb.proto.wandb_internal_pb2``). Recent wandb versions no longer ship a Python reader.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_FILE_HEADER = b":W&B"
_FILE_HEADER_BYTES = 7
_BLOCK_BYTES = 32 * 1024
_CHUNK_HEADER_BYTES = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run recorded."""

    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    folder: Path = Path()

    def logged(self, key: str) -> list[Any]:
        """Every value logged under ``key`` (history rows, in order)."""
        return [row[key] for row in self.history if key in row]


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if not data.startswith(_FILE_HEADER):
        raise ValueError(f"{path} is not a W&B run file")
    records: list[bytes] = []
    chunks: list[bytes] = []
    position = _FILE_HEADER_BYTES
    while position + _CHUNK_HEADER_BYTES <= len(data):
        left_in_block = _BLOCK_BYTES - position % _BLOCK_BYTES
        if left_in_block < _CHUNK_HEADER_BYTES:  # block trailer padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, position)
        if kind == 0 and length == 0:  # zero padding at the end
            break
        payload = data[position + _CHUNK_HEADER_BYTES : position + _CHUNK_HEADER_BYTES + length]
        position += _CHUNK_HEADER_BYTES + length
        if kind in (_FULL, _FIRST):
            chunks = [payload]
        else:
            chunks.append(payload)
        if kind in (_FULL, _LAST):
            records.append(b"".join(chunks))
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_folder: Path) -> OfflineRun:
    """Parse ``<run_folder>/run-*.wandb`` (``run_folder`` is ``wandb/offline-run-*``)."""
    (path,) = run_folder.glob("run-*.wandb")
    run = OfflineRun(folder=run_folder)
    for raw in _records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.project, run.group, run.name = record.run.project, record.run.run_group, record.run.display_name
            run.tags = list(record.run.tags)
            run.config.update({_key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run.config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                row[_key(item)] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "summary":
            run.summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    return run
