"""Read back what an offline wandb run wrote: the records of its ``run-<id>.wandb`` file.

wandb ≥ 0.19 writes the file from its Go core and ships no Python reader (the old
``wandb.sdk.internal.datastore`` is gone), so this is the same small reader: the file is a LevelDB-style
log (a 7-byte header ``:W&B``, magic 0xBEE1, version 0; then 32 KiB blocks of chunks, each with a
CRC-32, a length and a type: full, first, middle or last) of ``wandb.proto.wandb_internal_pb2.Record``
messages, decoded with wandb's own protobuf classes. ``offline_run`` gathers what the public API
would show of the run once synced: config, summary, group, job type, tags, name and state.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
CHUNK_HEADER = 7  # crc32 (uint32), length (uint16), type (uint8), little-endian
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    """The record payloads of a .wandb file's bytes, chunks joined and checksums checked."""
    if data[:4] != b":W&B" or struct.unpack("<HB", data[4:7]) != (0xBEE1, 0):
        raise ValueError("not a .wandb file (header)")
    position, pending = 7, b""
    while position + CHUNK_HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position:position + CHUNK_HEADER])
        chunk = data[position + CHUNK_HEADER:position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"checksum mismatch at byte {position}")
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            yield pending


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    parsed = []
    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        parsed.append(record)
    return parsed


@dataclass
class OfflineRun:
    """A synced run as ``wandb.Api().runs()`` shows it: ``config`` and ``summary`` are plain dicts."""

    id: str
    name: str
    group: str
    job_type: str
    tags: list[str]
    state: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    url: str | None = None


def _items(items, into: dict) -> None:
    """Apply config or summary updates: ``key`` is one key (dots and all), ``nested_key`` a path."""
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        target = into
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = json.loads(item.value_json)


def offline_run(run_folder: Path) -> OfflineRun:
    """The one wandb run logged under ``run_folder`` (``<run folder>/wandb/offline-run-*/run-*.wandb``)."""
    (path,) = Path(run_folder).glob("wandb/offline-run-*/run-*.wandb")
    config, summary, run, exit_code = {}, {}, None, None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            _items(run.config.update, config)
            _items(run.summary.update, summary)
        elif kind == "config":
            _items(record.config.update, config)
        elif kind == "summary":
            _items(record.summary.update, summary)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    state = {None: "running", 0: "finished"}.get(exit_code, "failed")
    return OfflineRun(run.run_id, run.display_name, run.run_group, run.job_type, list(run.tags), state,
                      {key: value for key, value in config.items() if not key.startswith("_")}, summary)
