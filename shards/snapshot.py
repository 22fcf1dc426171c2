"""On-disk snapshots of one shard: `snapshot-<LSN, 20 digits>/` holding

- `index.bin`: hnswlib's own save format (graph, vectors, deleted marks),
- `meta.npz`: the label -> (item_id, payload) table and the deleted set as plain arrays (no pickle),
- `manifest.json`: the LSN it covers, index parameters and counts.

A snapshot is built in a `.tmp-*` directory and renamed into place, so a `snapshot-*` directory is always
complete; leftovers of an interrupted build are deleted on open.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np
from numpy.typing import NDArray

from shards.records import IndexParams

log = logging.getLogger(__name__)

_FORMAT = 1
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})$")
_TEMP_PREFIX = ".tmp-snapshot-"
INDEX_FILE = "index.bin"


@dataclass
class ShardState:
    lsn: int
    index: hnswlib.Index
    records: dict[int, tuple[str, bytes]]
    deleted: set[int]


def _final_path(data_dir: Path, lsn: int) -> Path:
    return data_dir / f"snapshot-{lsn:020d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_snapshots(data_dir: Path) -> list[tuple[int, Path]]:
    """Complete snapshots, oldest first."""
    if not data_dir.exists():
        return []
    return sorted(
        (int(m.group(1)), data_dir / n) for n in os.listdir(data_dir) if (m := _SNAPSHOT_RE.match(n))
    )


def remove_temp_dirs(data_dir: Path) -> None:
    for name in os.listdir(data_dir):
        if name.startswith(_TEMP_PREFIX):
            log.warning("removing an interrupted snapshot %s", data_dir / name)
            shutil.rmtree(data_dir / name, ignore_errors=True)


def new_temp_dir(data_dir: Path) -> Path:
    path = data_dir / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
    path.mkdir()
    return path


def _pack_strings(items: list[bytes]) -> tuple[NDArray[np.uint64], NDArray[np.uint8]]:
    lengths = np.fromiter((len(b) for b in items), dtype=np.uint64, count=len(items))
    return lengths, np.frombuffer(b"".join(items), dtype=np.uint8)


def _unpack_strings(lengths: NDArray[np.uint64], blob: NDArray[np.uint8]) -> list[bytes]:
    raw = blob.tobytes()
    ends = np.cumsum(lengths).tolist()
    if not ends:
        return []
    starts = [0, *ends[:-1]]
    if ends and ends[-1] != len(raw):
        raise ValueError("string table lengths do not match its blob")
    return [raw[s:e] for s, e in zip(starts, ends, strict=True)]


def finish(
    temp_dir: Path,
    data_dir: Path,
    lsn: int,
    params: IndexParams,
    capacity: int,
    records: dict[int, tuple[str, bytes]],
    deleted: set[int],
) -> Path:
    """Write the tables next to an `index.bin` already saved in temp_dir, then publish atomically."""
    labels = np.fromiter(records.keys(), dtype=np.uint64, count=len(records))
    id_lens, id_blob = _pack_strings([v[0].encode("utf-8") for v in records.values()])
    payload_lens, payload_blob = _pack_strings([v[1] for v in records.values()])
    with open(temp_dir / "meta.npz", "wb") as f:
        np.savez(
            f,
            labels=labels,
            id_lens=id_lens,
            id_blob=id_blob,
            payload_lens=payload_lens,
            payload_blob=payload_blob,
            deleted=np.fromiter(deleted, dtype=np.uint64, count=len(deleted)),
        )
        f.flush()
        os.fsync(f.fileno())
    manifest = {
        "format": _FORMAT,
        "lsn": lsn,
        "params": asdict(params),
        "capacity": capacity,
        "items": len(records),
        "deleted": len(deleted),
    }
    with open(temp_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(temp_dir / INDEX_FILE)
    _fsync_path(temp_dir)
    final = _final_path(data_dir, lsn)
    if final.exists():  # the same LSN snapshotted twice: identical content, keep the old one
        shutil.rmtree(temp_dir)
        return final
    os.rename(temp_dir, final)
    _fsync_path(data_dir)
    return final


def load(path: Path, params: IndexParams) -> ShardState:
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{path}: unsupported snapshot format {manifest.get('format')}")
    saved = manifest["params"]
    for key in ("dim", "space"):
        if saved[key] != getattr(params, key):
            raise ValueError(
                f"{path}: snapshot has {key}={saved[key]!r}, configured {getattr(params, key)!r}"
            )
    index = hnswlib.Index(space=params.space, dim=params.dim)
    # Vacant (deleted) slots are reused by later adds; hnswlib rebuilds its list of them from the marks.
    index.load_index(
        str(path / INDEX_FILE), max_elements=int(manifest["capacity"]), allow_replace_deleted=True
    )
    with np.load(path / "meta.npz", allow_pickle=False) as meta:
        labels = meta["labels"].tolist()
        ids = [b.decode("utf-8") for b in _unpack_strings(meta["id_lens"], meta["id_blob"])]
        payloads = _unpack_strings(meta["payload_lens"], meta["payload_blob"])
        deleted = set(meta["deleted"].tolist())
    records = dict(zip(labels, zip(ids, payloads, strict=True), strict=True))
    if index.get_current_count() != len(records) + len(deleted):
        raise ValueError(
            f"{path}: index holds {index.get_current_count()} elements, "
            f"tables {len(records)} live + {len(deleted)} deleted"
        )
    return ShardState(int(manifest["lsn"]), index, records, deleted)


def remove_older(data_dir: Path, keep_lsn: int) -> None:
    for lsn, path in list_snapshots(data_dir):
        if lsn < keep_lsn:
            shutil.rmtree(path, ignore_errors=True)
