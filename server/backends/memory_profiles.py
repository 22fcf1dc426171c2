"""The embedded profile store: user profiles and bounded interaction histories in process memory.

Durability (when a data directory is given) is a write-ahead log plus a snapshot:

- each `upsert_profiles` / `append_interactions` call becomes ONE log record and returns only once that
  record is fsynced; the change is applied to memory after that, so a reader never sees a write that a
  crash could still lose, and memory always equals "snapshot + log replayed in LSN order";
- a single writer task drains the pending calls into one log append (one fsync for many calls) and
  applies them in LSN order, so concurrent writers to one user end in the same state after a restart;
- `compact()` writes the whole state as one Arrow IPC file (temp name, fsync, atomic rename) covering a
  known LSN, then drops the log segments below it; it runs in the background every
  `compact_after_records` records and from `close()`, so opening stays fast.

History is kept per user in time order and only the newest `history_limit` interactions are kept: older
ones are dropped from memory (and from the next snapshot), because the request path reads only the recent
history and an unbounded per-user list would grow without limit for heavy users. Two interactions with
the same (timestamp, item) are one interaction (the later write wins), as in the ScyllaDB table whose
clustering key they are, so reloading a dataset does not duplicate history.

Reads never wait for I/O: they look at immutable per-user values that writers replace, never mutate,
which also lets a snapshot capture the state with a shallow copy instead of a lock.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from server.backends.journal import Journal
from server.domain import Interaction, UserProfile
from server.errors import BackendError

log = logging.getLogger(__name__)

_BACKEND = "profiles"
SNAPSHOT_FILE = "profiles.snapshot"
_SNAPSHOT_FORMAT = "recd-profiles-1"

# Record: kind, format version, length of the JSON part; then the JSON part; then little-endian numbers.
_RECORD_HEADER = struct.Struct("<ccI")
_VERSION = b"\x01"
_PROFILES = b"P"
_INTERACTIONS = b"I"

# (timestamp_ms, item_id, action, weight): a tuple of atoms, which CPython's garbage collector stops
# tracking, so hundreds of thousands of stored events do not lengthen every full collection (Interaction
# objects would: they measured as 150 ms pauses of the event loop at 600k events).
Event = tuple[int, str, str, float]
History = tuple[Event, ...]


class InMemoryProfileStore:
    """Implements the ProfileStore protocol; durable when `data_dir` is given."""

    def __init__(
        self,
        data_dir: Path | None,
        history_limit: int = 500,
        *,
        compact_after_records: int = 10_000,
        group_commit_window_s: float = 0.002,
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        self.history_limit = history_limit
        self._profiles: dict[str, UserProfile] = {}
        # Oldest first, at most history_limit long, replaced (never mutated) on every change.
        self._histories: dict[str, History] = {}
        self._known: set[str] = set()
        self._journal = Journal(
            _BACKEND,
            data_dir,
            SNAPSHOT_FILE,
            apply_record=self._apply_record,
            load_snapshot=self._load_snapshot,
            capture_snapshot=self._capture_snapshot,
            compact_after_records=compact_after_records,
            group_commit_window_s=group_commit_window_s,
        )

    # --- reads ----------------------------------------------------------------------------------------
    async def get_profile(self, user_id: str, timeout_s: float) -> UserProfile | None:
        # timeout_s is unused: a dictionary lookup cannot outlive any budget.
        return self._profiles.get(user_id)

    async def recent_interactions(self, user_id: str, limit: int, timeout_s: float) -> list[Interaction]:
        if limit <= 0:
            return []
        history = self._histories.get(user_id, ())
        return [
            Interaction(user_id, item_id, action, weight, ts)
            for ts, item_id, action, weight in reversed(history[-limit:])
        ]

    async def count_users(self) -> int:
        """Users with a stored profile or any interaction."""
        return len(self._known)

    async def iter_interactions(self) -> AsyncIterator[Interaction]:
        """Every stored interaction (the newest `history_limit` per user), user by user, newest first."""
        for user_id, history in list(self._histories.items()):
            for ts, item_id, action, weight in reversed(history):
                yield Interaction(user_id, item_id, action, weight, ts)

    def known_user_ids(self) -> Iterator[str]:
        """Every user with a profile or history, in no particular order (a copy: safe while writing)."""
        return iter(list(self._known))

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert_profiles(self, profiles: Sequence[UserProfile]) -> None:
        if not profiles:
            return
        stored = [_frozen_profile(p) for p in profiles]
        await self._journal.write(_encode_profiles(stored), lambda: self._apply_profiles(stored))

    async def append_interactions(self, interactions: Sequence[Interaction]) -> None:
        if not interactions:
            return
        batch = list(interactions)
        await self._journal.write(_encode_interactions(batch), lambda: self._apply_interactions(batch))

    def _apply_profiles(self, profiles: Sequence[UserProfile]) -> None:
        for profile in profiles:
            self._profiles[profile.user_id] = profile
            self._known.add(profile.user_id)

    def _apply_interactions(self, interactions: Sequence[Interaction]) -> None:
        by_user: dict[str, list[Event]] = {}
        for i in interactions:
            by_user.setdefault(i.user_id, []).append((i.timestamp_ms, i.item_id, i.action, i.weight))
        for user_id, new in by_user.items():
            self._histories[user_id] = _merge(self._histories.get(user_id, ()), new, self.history_limit)
            self._known.add(user_id)

    def _apply_record(self, record: bytes, lsn: int) -> None:
        kind, version, json_len = _RECORD_HEADER.unpack_from(record)
        if version != _VERSION:
            raise BackendError(_BACKEND, f"log record {lsn} has unknown version {version!r}", False)
        meta = json.loads(record[_RECORD_HEADER.size : _RECORD_HEADER.size + json_len])
        numbers = memoryview(record)[_RECORD_HEADER.size + json_len :]
        if kind == _PROFILES:
            self._apply_profiles(_decode_profiles(meta, numbers))
        elif kind == _INTERACTIONS:
            self._apply_interactions(_decode_interactions(meta, numbers))
        else:
            raise BackendError(_BACKEND, f"log record {lsn} has unknown kind {kind!r}", transient=False)

    async def compact(self) -> None:
        """Write a snapshot of the current state and drop the log it makes redundant."""
        await self._journal.compact()

    def _capture_snapshot(self) -> Callable[[Path, int], None]:
        # Shallow copies suffice: the per-user values are replaced on write, never mutated.
        profiles = dict(self._profiles)
        histories = dict(self._histories)
        known = list(self._known)
        return lambda path, lsn: _write_snapshot(path, lsn, known, profiles, histories)

    def _load_snapshot(self, path: Path) -> int:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        metadata = table.schema.metadata or {}
        if metadata.get(b"format") != _SNAPSHOT_FORMAT.encode():
            raise BackendError(_BACKEND, f"{path} is not a profile store snapshot", transient=False)
        user_ids = table.column("user_id").to_pylist()
        has_profile = table.column("has_profile").to_pylist()
        attributes = table.column("attributes").to_pylist()
        embeddings = _split_lists(table.column("embedding").combine_chunks(), np.float32)
        history = table.column("history").combine_chunks()
        # `.values` with the absolute offsets (not `.flatten()`, which rebases them).
        events = history.values
        item_ids = events.field("item_id").to_pylist()
        actions = [sys.intern(a) for a in events.field("action").to_pylist()]
        weights = events.field("weight").to_pylist()
        times = events.field("timestamp_ms").to_pylist()
        offsets = history.offsets.to_pylist()
        for row, user_id in enumerate(user_ids):
            self._known.add(user_id)
            if has_profile[row]:
                embedding = embeddings[row]
                if embedding is not None:
                    embedding.flags.writeable = False
                self._profiles[user_id] = UserProfile(user_id, embedding, dict(attributes[row] or []))
            start, end = offsets[row], offsets[row + 1]
            if end > start:
                self._histories[user_id] = tuple(
                    zip(
                        times[start:end],
                        item_ids[start:end],
                        actions[start:end],
                        weights[start:end],
                        strict=True,
                    )
                )
        return int(metadata[b"lsn"])

    async def close(self) -> None:
        await self._journal.close()


def _frozen_profile(profile: UserProfile) -> UserProfile:
    """A private read-only copy, so neither the caller nor a reader can change stored state."""
    embedding = None
    if profile.embedding is not None:
        embedding = np.array(profile.embedding, dtype=np.float32).reshape(-1)
        embedding.flags.writeable = False
    return UserProfile(profile.user_id, embedding, dict(profile.attributes))


def _merge(history: History, new: list[Event], limit: int) -> History:
    """`history` plus `new`, in time order, one entry per (timestamp, item), the newest `limit` kept."""
    in_order = all(a[0] < b[0] for a, b in itertools.pairwise(new))
    if in_order and (not history or new[0][0] > history[-1][0]):
        merged = history + tuple(new)
    else:
        latest: dict[tuple[int, str], Event] = {}
        for event in (*history, *new):
            latest[event[:2]] = event
        # A stable sort: equal timestamps keep the order in which they were first written.
        merged = tuple(sorted(latest.values(), key=lambda event: event[0]))
    return merged[-limit:]


# --- log records --------------------------------------------------------------------------------------
def _record(kind: bytes, meta: object, numbers: bytes) -> bytes:
    header = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    return _RECORD_HEADER.pack(kind, _VERSION, len(header)) + header + numbers


def _encode_profiles(profiles: Sequence[UserProfile]) -> bytes:
    dims = [-1 if p.embedding is None else len(p.embedding) for p in profiles]
    vectors = [p.embedding for p in profiles if p.embedding is not None]
    numbers = np.concatenate(vectors).astype("<f4").tobytes() if vectors else b""
    meta = {"ids": [p.user_id for p in profiles], "attrs": [p.attributes for p in profiles], "dims": dims}
    return _record(_PROFILES, meta, numbers)


def _decode_profiles(meta: dict[str, list], numbers: memoryview) -> list[UserProfile]:
    values = np.frombuffer(numbers, dtype="<f4").astype(np.float32)
    profiles = []
    offset = 0
    for user_id, attributes, dim in zip(meta["ids"], meta["attrs"], meta["dims"], strict=True):
        embedding = None
        if dim >= 0:
            embedding = values[offset : offset + dim]
            embedding.flags.writeable = False
            offset += dim
        profiles.append(UserProfile(user_id, embedding, attributes))
    return profiles


def _encode_interactions(interactions: Sequence[Interaction]) -> bytes:
    meta = {
        "users": [i.user_id for i in interactions],
        "items": [i.item_id for i in interactions],
        "actions": [i.action for i in interactions],
    }
    # float64 weights: replay must rebuild exactly the values the live store applied.
    weights = np.array([i.weight for i in interactions], dtype="<f8")
    try:
        times = np.array([i.timestamp_ms for i in interactions], dtype="<i8")
    except OverflowError as exc:
        raise BackendError(_BACKEND, "timestamp_ms does not fit in 64 bits", transient=False) from exc
    return _record(_INTERACTIONS, meta, weights.tobytes() + times.tobytes())


def _decode_interactions(meta: dict[str, list], numbers: memoryview) -> list[Interaction]:
    n = len(meta["users"])
    weights = np.frombuffer(numbers, dtype="<f8", count=n).tolist()
    times = np.frombuffer(numbers, dtype="<i8", count=n, offset=8 * n).tolist()
    return [
        Interaction(user, item, sys.intern(action), weight, ts)
        for user, item, action, weight, ts in zip(
            meta["users"], meta["items"], meta["actions"], weights, times, strict=True
        )
    ]


# --- snapshot -----------------------------------------------------------------------------------------
_HISTORY_TYPE = pa.list_(
    pa.struct(
        [
            ("item_id", pa.string()),
            ("action", pa.string()),
            ("weight", pa.float64()),
            ("timestamp_ms", pa.int64()),
        ]
    )
)


_SNAPSHOT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("has_profile", pa.bool_()),
        ("embedding", pa.list_(pa.float32())),
        ("attributes", pa.map_(pa.string(), pa.string())),
        ("history", _HISTORY_TYPE),
    ]
)
# Users per record batch: building one batch holds the GIL, so small batches keep the event loop (which
# serves requests while the snapshot is written on a worker thread) from stalling.
SNAPSHOT_BATCH_USERS = 1000


def _write_snapshot(
    path: Path,
    lsn: int,
    user_ids: list[str],
    profiles: dict[str, UserProfile],
    histories: dict[str, History],
) -> None:
    batches = (
        _snapshot_batch(user_ids[start : start + SNAPSHOT_BATCH_USERS], profiles, histories)
        for start in range(0, len(user_ids), SNAPSHOT_BATCH_USERS)
    )
    schema = _SNAPSHOT_SCHEMA.with_metadata({"format": _SNAPSHOT_FORMAT, "lsn": str(lsn)})
    _write_atomically(path, schema, batches)


def _snapshot_batch(
    user_ids: list[str], profiles: dict[str, UserProfile], histories: dict[str, History]
) -> pa.RecordBatch:
    user_profiles = [profiles.get(u) for u in user_ids]
    user_histories = [histories.get(u, ()) for u in user_ids]
    vectors = [p.embedding if p is not None else None for p in user_profiles]
    lengths = np.array([0 if v is None else len(v) for v in vectors], dtype=np.int64)
    present = [v for v in vectors if v is not None]
    embedding = pa.ListArray.from_arrays(
        pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32)),
        pa.array(np.concatenate(present) if present else np.empty(0, np.float32), pa.float32()),
        mask=pa.array([v is None for v in vectors]),
    )
    events = [event for history in user_histories for event in history]
    times, item_ids, actions, weights = zip(*events, strict=True) if events else ((), (), (), ())
    history = pa.ListArray.from_arrays(
        pa.array(np.r_[0, np.cumsum([len(h) for h in user_histories])].astype(np.int32)),
        pa.StructArray.from_arrays(
            [
                pa.array(item_ids, pa.string()),
                pa.array(actions, pa.string()),
                pa.array(weights, pa.float64()),
                pa.array(times, pa.int64()),
            ],
            fields=list(_HISTORY_TYPE.value_type),
        ),
    )
    attributes = pa.array(
        [None if p is None else p.attributes for p in user_profiles], pa.map_(pa.string(), pa.string())
    )
    has_profile = pa.array([p is not None for p in user_profiles])
    columns = [pa.array(user_ids, pa.string()), has_profile, embedding, attributes, history]
    return pa.RecordBatch.from_arrays(columns, schema=_SNAPSHOT_SCHEMA)


def _write_atomically(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        with pa.ipc.new_file(f, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_lists(column: pa.ListArray, dtype: type) -> list[np.ndarray | None]:
    """Rows of a list column as NumPy slices of one buffer (None for null rows)."""
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype)
    offsets = column.offsets.to_numpy()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(column))]
