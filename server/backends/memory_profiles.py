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

Each user also has a seen set: every item they interacted with, as stable 64-bit item hashes, the
`seen_limit` most recently seen kept (by interaction time); and every interaction adds to the items'
time-decayed popularity counts, one accumulator per configured list (server/popularity.py). Both are
updated in `_apply_interactions`, so replaying the log rebuilds them, and both are in the snapshot.

`delete_users` is one log record like any write (fsynced before it returns; replay applies it after
the writes it follows), and then asks for a compaction, so the erased users' data also leaves the disk:
the new snapshot no longer holds them and the log segments that did are dropped. Their interactions stay
counted in the items' popularity (anonymous aggregates), which replay reproduces the same way.

The exposure log (server/experiments) lives here too: per user, the newest `keep_per_user` answers
served (the bound each `record_exposures` call gives) and at most `outcomes_per_user` attributed
interactions, both newest first. Each entry expires `ttl_s` after the call that recorded it (the write
time, as a CQL `USING TTL` counts; for answers logged as they are served that is their serving time),
by the wall clock, so expiry holds across restarts. Expired entries are never answered; they leave
memory when their user is next written or read, or by a sweep that a few writes advance at a time, and
no snapshot holds them. Both are log records and snapshot rows like the rest, and an erasure removes
them. Exposures and outcomes do not make a user count in `count_users` (users with a profile or
history). The same (served time, items, arm) recorded twice is one exposure, and the same (time, item,
action) one outcome, as in the CQL tables whose clustering keys they are: a retried write counts once.

Reads never wait for I/O: they look at immutable per-user values that writers replace, never mutate,
which also lets a snapshot capture the state with a shallow copy instead of a lock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from server import _core
from server.backends import seen as seen_sets
from server.backends.base import ItemHashes, UserExport, UserRecord
from server.backends.journal import Journal
from server.config import PopularityConfig
from server.domain import Exposure, Interaction, Outcome, UserProfile
from server.errors import BackendError
from server.popularity import DecayedCounts

log = logging.getLogger(__name__)

_BACKEND = "profiles"
SNAPSHOT_FILE = "profiles.snapshot"
_SNAPSHOT_FORMAT = "recd-profiles-3"
# Without the exposure log: loads as format 3 with none held.
_SNAPSHOT_FORMAT_2 = "recd-profiles-2"
# Without seen sets and popularity counts: loading one derives both from the histories it holds.
_SNAPSHOT_FORMAT_1 = "recd-profiles-1"

# Record: kind, format version, length of the JSON part; then the JSON part; then little-endian numbers.
_RECORD_HEADER = struct.Struct("<ccI")
_VERSION = b"\x01"
_PROFILES = b"P"
_INTERACTIONS = b"I"
_ERASURES = b"E"
_EXPOSURES = b"X"
_OUTCOMES = b"O"

# (timestamp_ms, item_id, action, weight): a tuple of atoms, which CPython's garbage collector stops
# tracking, so hundreds of thousands of stored events do not lengthen every full collection (Interaction
# objects would: they measured as 150 ms pauses of the event loop at 600k events).
Event = tuple[int, str, str, float]
History = tuple[Event, ...]
# (served_at_ms, item_ids, arm, latency_ms, diversity, expires_at_ms) and (at_ms, item_id, action,
# weight, served_at_ms, arm, expires_at_ms): atoms too, for the same reason.
ExposureEntry = tuple[int, tuple[str, ...], str, float, float, int]
OutcomeEntry = tuple[int, str, str, float, int, str, int]
# A user's exposures (or outcomes), newest first: replaced, never mutated.
Exposures = tuple[ExposureEntry, ...]
Outcomes = tuple[OutcomeEntry, ...]
Entry = TypeVar("Entry", ExposureEntry, OutcomeEntry)

# Users whose expired exposures and outcomes one write sweeps; a full pass starts at most this often.
_SWEEP_USERS = 512
_SWEEP_EVERY_MS = 60_000
# Users a scan of the exposure log reads between yields to the event loop.
_SCAN_USERS = 2000


class InMemoryProfileStore:
    """Implements the ProfileStore protocol; durable when `data_dir` is given."""

    def __init__(
        self,
        data_dir: Path | None,
        history_limit: int = 500,
        *,
        seen_limit: int = 10_000,
        popularity_half_lives: Mapping[str, float] | None = None,
        compact_after_records: int = 10_000,
        group_commit_window_s: float = 0.002,
        outcomes_per_user: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`outcomes_per_user`: attributed interactions kept per user (the newest); the default is ten
        per answer of the default exposures.keep_per_user. `clock`: the wall clock (seconds) that the
        exposure log's expiry reads (tests inject one)."""
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        if seen_limit < 1:
            raise ValueError(f"seen_limit must be at least 1, got {seen_limit}")
        if outcomes_per_user < 1:
            raise ValueError(f"outcomes_per_user must be at least 1, got {outcomes_per_user}")
        self.history_limit = history_limit
        self.seen_limit = seen_limit
        self.outcomes_per_user = outcomes_per_user
        self._clock = clock
        self._exposures: dict[str, Exposures] = {}
        self._outcomes: dict[str, Outcomes] = {}
        # Users still to sweep for expired entries in this pass, and when the next pass may start.
        self._sweep_pending: list[str] = []
        self._next_sweep_ms = 0
        self._profiles: dict[str, UserProfile] = {}
        # Oldest first, at most history_limit long, replaced (never mutated) on every change.
        self._histories: dict[str, History] = {}
        # At most seen_limit items, replaced (never mutated) on every change.
        self._seen: dict[str, seen_sets.SeenSet] = {}
        half_lives = PopularityConfig().lists if popularity_half_lives is None else popularity_half_lives
        self._popularity = {name: DecayedCounts(h) for name, h in half_lives.items()}
        # The newest interaction timestamp held: the reference time of the popularity counts.
        self._newest_ms: int | None = None
        # Bumped by every applied interaction write: item_popularity reuses its last answer until then.
        self._popularity_version = 0
        self._popularity_answer: tuple[int, dict[str, dict[str, float]]] | None = None
        self._known: set[str] = set()
        # Set by an erasure, cleared by the compaction it starts (see _compact_after_erasure).
        self._erasure_unsnapshotted = False
        self._erasure_compaction: asyncio.Task[None] | None = None
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

    async def seen_items(self, user_id: str, timeout_s: float) -> ItemHashes:
        return self._seen.get(user_id, seen_sets.EMPTY)[0]

    async def read_users(
        self, user_ids: Sequence[str], history_limit: int, timeout_s: float
    ) -> list[UserRecord]:
        # In memory: one pass, no coroutine per user.
        out = []
        for user_id in user_ids:
            history = self._histories.get(user_id, ()) if history_limit > 0 else ()
            out.append(
                UserRecord(
                    self._profiles.get(user_id),
                    [
                        Interaction(user_id, item_id, action, weight, ts)
                        for ts, item_id, action, weight in reversed(history[-history_limit:])
                    ],
                    self._seen.get(user_id, seen_sets.EMPTY)[0],
                )
            )
        return out

    async def item_popularity(self, timeout_s: float) -> Mapping[str, Mapping[str, float]]:
        # Decaying every count is O(items): done once per write version, not once per caller, and on a
        # worker thread: building 200k-entry dicts took ~35 ms that the event loop would otherwise stall
        # for. A write applied meanwhile may or may not be in this answer; the next version has it.
        answer = self._popularity_answer
        version = self._popularity_version
        if answer is None or answer[0] != version:
            counts = await asyncio.to_thread(self._decay_all, self._newest_ms)
            answer = self._popularity_answer = (version, counts)
        return answer[1]

    def _decay_all(self, reference: int | None) -> dict[str, dict[str, float]]:
        return {
            name: {} if reference is None else accumulator.decayed(reference)
            for name, accumulator in self._popularity.items()
        }

    async def count_users(self) -> int:
        """Users with a stored profile or any interaction."""
        return len(self._known)

    async def iter_interactions(self) -> AsyncIterator[Interaction]:
        """Every stored interaction (the newest `history_limit` per user), user by user, newest first."""
        for user_id, history in list(self._histories.items()):
            for ts, item_id, action, weight in reversed(history):
                yield Interaction(user_id, item_id, action, weight, ts)

    async def export_user(self, user_id: str, interaction_limit: int, timeout_s: float) -> UserExport:
        history = self._histories.get(user_id, ())
        limit = max(interaction_limit, 0)
        hashes, times = self._seen.get(user_id, seen_sets.EMPTY)
        now_ms = self._now_ms()
        return UserExport(
            self._profiles.get(user_id),
            await self.recent_interactions(user_id, limit, timeout_s),
            len(history) > limit,
            hashes,
            times,
            exposures_held=sum(1 for e in self._exposures.get(user_id, ()) if e[5] > now_ms),
            outcomes_held=sum(1 for o in self._outcomes.get(user_id, ()) if o[6] > now_ms),
        )

    # --- the exposure log: reads -----------------------------------------------------------------------
    async def read_exposures(
        self, user_ids: Sequence[str], since_ms: int, limit: int, timeout_s: float
    ) -> list[list[Exposure]]:
        now_ms = self._now_ms()
        out: list[list[Exposure]] = []
        for user_id in user_ids:
            held = self._exposures.get(user_id, ())
            found: list[Exposure] = []
            if held and held[-1][5] <= now_ms:
                held = self._prune_user(user_id, now_ms)[0]
            for served_at, item_ids, arm, latency_ms, diversity, expires_at in held:
                if served_at < since_ms or len(found) >= limit:
                    break
                if expires_at > now_ms:
                    found.append(Exposure(user_id, served_at, item_ids, arm, latency_ms, diversity))
            out.append(found)
        return out

    async def scan_exposures(self, since_ms: int) -> list[Exposure]:
        """User by user, newest first within each; yields to the event loop between chunks of users."""
        now_ms = self._now_ms()
        found: list[Exposure] = []
        for n, (user_id, held) in enumerate(list(self._exposures.items()), 1):
            for served_at, item_ids, arm, latency_ms, diversity, expires_at in held:
                if served_at < since_ms:
                    break
                if expires_at > now_ms:
                    found.append(Exposure(user_id, served_at, item_ids, arm, latency_ms, diversity))
            if n % _SCAN_USERS == 0:
                await asyncio.sleep(0)
        return found

    async def scan_outcomes(self, since_ms: int) -> list[Outcome]:
        now_ms = self._now_ms()
        found: list[Outcome] = []
        for n, (user_id, held) in enumerate(list(self._outcomes.items()), 1):
            for at_ms, item_id, action, weight, served_at, arm, expires_at in held:
                if at_ms < since_ms:
                    break
                if expires_at > now_ms:
                    found.append(Outcome(user_id, item_id, action, weight, at_ms, served_at, arm))
            if n % _SCAN_USERS == 0:
                await asyncio.sleep(0)
        return found

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

    async def record_exposures(self, exposures: Sequence[Exposure], keep_per_user: int, ttl_s: float) -> None:
        if keep_per_user < 1:
            raise ValueError(f"keep_per_user must be at least 1, got {keep_per_user}")
        expires_at = self._expiry(ttl_s)
        if not exposures:
            return
        batch = list(exposures)
        record = _encode_exposures(batch, keep_per_user, expires_at)
        await self._journal.write(record, lambda: self._apply_exposures(batch, keep_per_user, expires_at))

    async def record_outcomes(self, outcomes: Sequence[Outcome], ttl_s: float) -> None:
        expires_at = self._expiry(ttl_s)
        if not outcomes:
            return
        batch = list(outcomes)
        record = _encode_outcomes(batch, expires_at)
        await self._journal.write(record, lambda: self._apply_outcomes(batch, expires_at))

    def _expiry(self, ttl_s: float) -> int:
        if not (ttl_s > 0 and math.isfinite(ttl_s)):
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
        return self._now_ms() + math.ceil(ttl_s * 1000)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def delete_users(self, user_ids: Sequence[str]) -> None:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return
        await self._journal.write(
            _record(_ERASURES, {"users": users}, b""), lambda: self._apply_erasures(users)
        )
        if self._journal.durable:
            self._erasure_unsnapshotted = True
            if self._erasure_compaction is None or self._erasure_compaction.done():
                self._erasure_compaction = asyncio.create_task(self._compact_after_erasure())

    async def _compact_after_erasure(self) -> None:
        """Snapshots until no erasure is left that only the log records: until then, the erased users'
        data still sits in the previous snapshot and log segments. One task for a burst of erasures."""
        while self._erasure_unsnapshotted and not self._journal.closed:
            self._erasure_unsnapshotted = False
            try:
                await self._journal.compact()
            except Exception:
                # The erasure itself is durable (logged); the next erasure, the periodic compaction or
                # close() snapshots again.
                self._erasure_unsnapshotted = True
                log.exception("%s: the snapshot after an erasure failed", _BACKEND)
                return

    def _apply_erasures(self, user_ids: Sequence[str]) -> None:
        for user_id in user_ids:
            self._profiles.pop(user_id, None)
            self._histories.pop(user_id, None)
            self._seen.pop(user_id, None)
            self._exposures.pop(user_id, None)
            self._outcomes.pop(user_id, None)
            self._known.discard(user_id)

    def _apply_exposures(self, exposures: Sequence[Exposure], keep: int, expires_at: int) -> None:
        now_ms = self._now_ms()
        by_user: dict[str, list[ExposureEntry]] = {}
        for e in exposures:
            entry = (
                e.served_at_ms,
                tuple(e.item_ids),
                sys.intern(e.arm),
                e.latency_ms,
                e.diversity,
                expires_at,
            )
            by_user.setdefault(e.user_id, []).append(entry)
        for user_id, new in by_user.items():
            held = self._exposures.get(user_id, ())
            self._exposures[user_id] = _merge_newest_first(held, new, keep, now_ms, key_width=3)
        self._sweep(now_ms)

    def _apply_outcomes(self, outcomes: Sequence[Outcome], expires_at: int) -> None:
        now_ms = self._now_ms()
        by_user: dict[str, list[OutcomeEntry]] = {}
        for o in outcomes:
            entry = (
                o.at_ms,
                o.item_id,
                sys.intern(o.action),
                o.weight,
                o.served_at_ms,
                sys.intern(o.arm),
                expires_at,
            )
            by_user.setdefault(o.user_id, []).append(entry)
        for user_id, new in by_user.items():
            held = self._outcomes.get(user_id, ())
            self._outcomes[user_id] = _merge_newest_first(
                held, new, self.outcomes_per_user, now_ms, key_width=3
            )
        self._sweep(now_ms)

    def _prune_user(self, user_id: str, now_ms: int) -> tuple[Exposures, Outcomes]:
        """Drops the user's expired exposures and outcomes (the user too, once nothing is left)."""
        exposures = tuple(e for e in self._exposures.get(user_id, ()) if e[5] > now_ms)
        outcomes = tuple(o for o in self._outcomes.get(user_id, ()) if o[6] > now_ms)
        if exposures:
            self._exposures[user_id] = exposures
        else:
            self._exposures.pop(user_id, None)
        if outcomes:
            self._outcomes[user_id] = outcomes
        else:
            self._outcomes.pop(user_id, None)
        return exposures, outcomes

    def _sweep(self, now_ms: int) -> None:
        """Prunes a few users of the current pass: users who are never written or read again still
        leave memory once expired, without one write paying for a pass over every user."""
        if not self._sweep_pending:
            if now_ms < self._next_sweep_ms:
                return
            self._next_sweep_ms = now_ms + _SWEEP_EVERY_MS
            # Copies of the keys, not their union: a set of every user would cost the loop far more.
            self._sweep_pending = [*self._exposures, *self._outcomes]
        for _ in range(min(_SWEEP_USERS, len(self._sweep_pending))):
            user_id = self._sweep_pending.pop()
            exposures = self._exposures.get(user_id, ())
            outcomes = self._outcomes.get(user_id, ())
            # Newest first: the last entry is the oldest, as a rule also the first to expire (an entry
            # backfilled out of order may wait for its user's next read or write; it is never answered).
            if (exposures and exposures[-1][5] <= now_ms) or (outcomes and outcomes[-1][6] <= now_ms):
                self._prune_user(user_id, now_ms)

    def _apply_profiles(self, profiles: Sequence[UserProfile]) -> None:
        for profile in profiles:
            self._profiles[profile.user_id] = profile
            self._known.add(profile.user_id)

    def _apply_interactions(self, interactions: Sequence[Interaction]) -> None:
        by_user: dict[str, list[Event]] = {}
        seen_by_user: dict[str, list[tuple[int, int]]] = {}
        # One hashing call for the whole batch: per-user calls cost more than the hashing itself.
        hashes = _core.stable_hash64([i.item_id for i in interactions]).tolist()
        for i, item_hash in zip(interactions, hashes, strict=True):
            by_user.setdefault(i.user_id, []).append((i.timestamp_ms, i.item_id, i.action, i.weight))
            seen_by_user.setdefault(i.user_id, []).append((item_hash, i.timestamp_ms))
        for user_id, new in by_user.items():
            self._histories[user_id] = _merge(self._histories.get(user_id, ()), new, self.history_limit)
            self._add_seen(user_id, seen_by_user[user_id])
            self._known.add(user_id)
        self._add_popularity(interactions)

    def _add_seen(self, user_id: str, pairs: Sequence[tuple[int, int]]) -> None:
        """Adds (item hash, timestamp) pairs to the user's seen set (replaced, never mutated)."""
        held = self._seen.get(user_id, seen_sets.EMPTY)
        self._seen[user_id] = seen_sets.add(held, pairs, self.seen_limit)

    def _add_popularity(self, interactions: Sequence[Interaction]) -> None:
        if not interactions:
            return
        item_ids = [i.item_id for i in interactions]
        times = [i.timestamp_ms for i in interactions]
        weights = [i.weight for i in interactions]
        for accumulator in self._popularity.values():
            accumulator.add(item_ids, times, weights)
        newest = max(times)
        if self._newest_ms is None or newest > self._newest_ms:
            self._newest_ms = newest
        self._popularity_version += 1

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
        elif kind == _ERASURES:
            self._apply_erasures(meta["users"])
        elif kind == _EXPOSURES:
            self._apply_exposures(_decode_exposures(meta, numbers), meta["keep"], meta["expires"])
        elif kind == _OUTCOMES:
            self._apply_outcomes(_decode_outcomes(meta, numbers), meta["expires"])
        else:
            raise BackendError(_BACKEND, f"log record {lsn} has unknown kind {kind!r}", transient=False)

    async def compact(self) -> None:
        """Write a snapshot of the current state and drop the log it makes redundant."""
        await self._journal.compact()

    def _capture_snapshot(self) -> Callable[[Path, int], None]:
        # Shallow copies suffice: the per-user values (and per-item counts) are replaced on write, never
        # mutated.
        state = _SnapshotState(
            known=list(self._known),
            profiles=dict(self._profiles),
            histories=dict(self._histories),
            seen=dict(self._seen),
            popularity={name: counts.snapshot() for name, counts in self._popularity.items()},
            half_lives={name: counts.half_life_s for name, counts in self._popularity.items()},
            newest_ms=self._newest_ms,
            exposures=dict(self._exposures),
            outcomes=dict(self._outcomes),
            now_ms=self._now_ms(),
        )
        return lambda path, lsn: _write_snapshot(path, lsn, state)

    def _load_snapshot(self, path: Path) -> int:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        metadata = table.schema.metadata or {}
        snapshot_format = metadata.get(b"format")
        if snapshot_format == _SNAPSHOT_FORMAT_1.encode():
            self._load_users(table)
            # Seen sets and counts as far as the histories (the newest history_limit per user) hold them.
            for user_id, history in self._histories.items():
                hashes = _core.stable_hash64([event[1] for event in history]).tolist()
                self._add_seen(user_id, [(h, event[0]) for h, event in zip(hashes, history, strict=True)])
            self._derive_popularity(self._popularity)
            return int(metadata[b"lsn"])
        if snapshot_format not in (_SNAPSHOT_FORMAT.encode(), _SNAPSHOT_FORMAT_2.encode()):
            raise BackendError(_BACKEND, f"{path} is not a profile store snapshot", transient=False)
        self._load_users(table.filter(pc.is_valid(table.column("user_id"))))
        self._load_popularity(table.filter(pc.is_valid(table.column("popularity_list"))), metadata)
        if "exposure_user" in table.column_names:
            self._load_exposure_log(table)
        return int(metadata[b"lsn"])

    def _load_exposure_log(self, table: pa.Table) -> None:
        now_ms = self._now_ms()
        rows = table.filter(pc.is_valid(table.column("exposure_user")))
        exposures: dict[str, list[ExposureEntry]] = {}
        arms: dict[str, str] = {}  # one string object per distinct arm, as the live store interns them
        for user_id, served_at, items, arm, latency, diversity, expires in zip(
            *(rows.column(name).to_pylist() for name, _ in _EXPOSURE_FIELDS), strict=True
        ):
            if expires > now_ms:
                arm = arms.setdefault(arm, sys.intern(arm))
                exposures.setdefault(user_id, []).append(
                    (served_at, tuple(items), arm, latency, diversity, expires)
                )
        self._exposures.update((user_id, tuple(entries)) for user_id, entries in exposures.items())
        rows = table.filter(pc.is_valid(table.column("outcome_user")))
        outcomes: dict[str, list[OutcomeEntry]] = {}
        for user_id, at, item, action, weight, served_at, arm, expires in zip(
            *(rows.column(name).to_pylist() for name, _ in _OUTCOME_FIELDS), strict=True
        ):
            if expires > now_ms:
                entry = (at, item, sys.intern(action), weight, served_at, sys.intern(arm), expires)
                outcomes.setdefault(user_id, []).append(entry)
        self._outcomes.update((user_id, tuple(entries)) for user_id, entries in outcomes.items())

    def _load_popularity(self, table: pa.Table, metadata: dict[bytes, bytes]) -> None:
        newest = metadata.get(b"newest_ms")
        self._newest_ms = int(newest) if newest else None
        stored_half_lives = json.loads(metadata.get(b"popularity_lists", b"{}"))
        for name, counts in self._popularity.items():
            if stored_half_lives.get(name) != counts.half_life_s:
                continue
            rows = table.filter(pc.equal(table.column("popularity_list"), name))
            counts.add_values(
                rows.column("popularity_item").to_pylist(),
                rows.column("popularity_epoch").to_numpy().astype(np.int64),
                rows.column("popularity_value").to_numpy().astype(np.float64),
            )
        # Lists configured since the snapshot, or whose half-life changed, restart from the histories.
        changed = {
            name: counts
            for name, counts in self._popularity.items()
            if stored_half_lives.get(name) != counts.half_life_s
        }
        if changed:
            log.warning(
                "popularity lists %s are new or have a new half-life: their counts restart from the "
                "held histories",
                sorted(changed),
            )
            self._derive_popularity(changed)

    def _derive_popularity(self, lists: Mapping[str, DecayedCounts]) -> None:
        events = [event for history in self._histories.values() for event in history]
        if not events:
            return
        times, item_ids, _, weights = zip(*events, strict=True)
        for counts in lists.values():
            counts.add(item_ids, times, weights)
        newest = max(times)
        if self._newest_ms is None or newest > self._newest_ms:
            self._newest_ms = newest

    def _load_users(self, table: pa.Table) -> None:
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
        if "seen_hashes" in table.column_names:
            seen_hashes = table.column("seen_hashes").combine_chunks()
            seen_times = table.column("seen_times").combine_chunks()
            all_hashes = seen_hashes.values.to_numpy(zero_copy_only=False).astype(np.uint64)
            all_times = seen_times.values.to_numpy(zero_copy_only=False).astype(np.int64)
            seen_offsets = seen_hashes.offsets.to_numpy()
            for row, user_id in enumerate(user_ids):
                start, end = seen_offsets[row], seen_offsets[row + 1]
                if end - start > self.seen_limit:  # seen_limit was lowered since the snapshot
                    pairs = all_hashes[start:end], all_times[start:end]
                    self._seen[user_id] = seen_sets.from_pairs(*pairs, self.seen_limit)
                elif end > start:
                    # Written sorted and unique: slices of one buffer, not a copy per user.
                    self._seen[user_id] = seen_sets.frozen(all_hashes[start:end], all_times[start:end])

    async def close(self) -> None:
        if self._erasure_compaction is not None:
            await asyncio.gather(self._erasure_compaction, return_exceptions=True)
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


def _merge_newest_first(
    held: tuple[Entry, ...], new: list[Entry], limit: int, now_ms: int, key_width: int
) -> tuple[Entry, ...]:
    """`held` (newest first) plus `new`, newest first by their first field (a time), one entry per key
    (the first `key_width` fields; the later write wins), the expired dropped, the newest `limit` kept."""
    new.sort(key=lambda e: e[0], reverse=True)  # stable: equal times keep their written order
    distinct = len({e[:key_width] for e in new}) == len(new)
    merged: tuple[Entry, ...]
    if distinct and (not held or new[-1][0] > held[0][0]):
        # The usual case: answers logged as they are served are newer than every one held.
        merged = tuple(new) + held
    else:
        latest: dict[tuple[Any, ...], Entry] = {}
        for entry in itertools.chain(held, new):
            latest[entry[:key_width]] = entry
        merged = tuple(sorted(latest.values(), key=lambda e: e[0], reverse=True))
    if merged and merged[-1][-1] <= now_ms:
        merged = tuple(e for e in merged if e[-1] > now_ms)
    return merged[:limit]


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


def _encode_exposures(exposures: Sequence[Exposure], keep: int, expires_at: int) -> bytes:
    meta = {
        "keep": keep,
        "expires": expires_at,
        "users": [e.user_id for e in exposures],
        "items": [list(e.item_ids) for e in exposures],
        "arms": [e.arm for e in exposures],
    }
    latency = np.array([e.latency_ms for e in exposures], dtype="<f8")
    diversity = np.array([e.diversity for e in exposures], dtype="<f8")
    served_at = _times([e.served_at_ms for e in exposures], "served_at_ms")
    return _record(_EXPOSURES, meta, served_at.tobytes() + latency.tobytes() + diversity.tobytes())


def _decode_exposures(meta: dict[str, Any], numbers: memoryview) -> list[Exposure]:
    n = len(meta["users"])
    served_at = np.frombuffer(numbers, dtype="<i8", count=n).tolist()
    latency = np.frombuffer(numbers, dtype="<f8", count=n, offset=8 * n).tolist()
    diversity = np.frombuffer(numbers, dtype="<f8", count=n, offset=16 * n).tolist()
    return [
        Exposure(user, at, tuple(items), arm, lat, div)
        for user, items, arm, at, lat, div in zip(
            meta["users"], meta["items"], meta["arms"], served_at, latency, diversity, strict=True
        )
    ]


def _encode_outcomes(outcomes: Sequence[Outcome], expires_at: int) -> bytes:
    meta = {
        "expires": expires_at,
        "users": [o.user_id for o in outcomes],
        "items": [o.item_id for o in outcomes],
        "actions": [o.action for o in outcomes],
        "arms": [o.arm for o in outcomes],
    }
    weights = np.array([o.weight for o in outcomes], dtype="<f8")
    at = _times([o.at_ms for o in outcomes], "at_ms")
    served_at = _times([o.served_at_ms for o in outcomes], "served_at_ms")
    return _record(_OUTCOMES, meta, weights.tobytes() + at.tobytes() + served_at.tobytes())


def _decode_outcomes(meta: dict[str, Any], numbers: memoryview) -> list[Outcome]:
    n = len(meta["users"])
    weights = np.frombuffer(numbers, dtype="<f8", count=n).tolist()
    at = np.frombuffer(numbers, dtype="<i8", count=n, offset=8 * n).tolist()
    served_at = np.frombuffer(numbers, dtype="<i8", count=n, offset=16 * n).tolist()
    return [
        Outcome(user, item, action, weight, at_ms, served, arm)
        for user, item, action, arm, weight, at_ms, served in zip(
            meta["users"], meta["items"], meta["actions"], meta["arms"], weights, at, served_at, strict=True
        )
    ]


def _times(values: list[int], what: str) -> np.ndarray:
    try:
        return np.array(values, dtype="<i8")
    except OverflowError as exc:
        raise ValueError(f"{what} does not fit in 64 bits") from exc


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


# One file, two kinds of rows: a user row (user_id set) holds the user's profile, history and seen set;
# a popularity row (popularity_list set) holds one item's count in one list. One file keeps both at the
# same LSN, written and renamed atomically together.
_USER_FIELDS = [
    ("user_id", pa.string()),
    ("has_profile", pa.bool_()),
    ("embedding", pa.list_(pa.float32())),
    ("attributes", pa.map_(pa.string(), pa.string())),
    ("history", _HISTORY_TYPE),
    ("seen_hashes", pa.list_(pa.uint64())),  # sorted ascending
    ("seen_times", pa.list_(pa.int64())),  # last seen (ms), aligned with seen_hashes
]
_POPULARITY_FIELDS = [
    ("popularity_list", pa.string()),
    ("popularity_item", pa.string()),
    ("popularity_epoch", pa.int64()),  # server/popularity.py: the value counts from this epoch's start
    ("popularity_value", pa.float64()),
]
# An exposure row (exposure_user set) holds one exposure, an outcome row (outcome_user set) one outcome;
# a user's rows are newest first and together.
_EXPOSURE_FIELDS = [
    ("exposure_user", pa.string()),
    ("exposure_served_at_ms", pa.int64()),
    ("exposure_items", pa.list_(pa.string())),
    ("exposure_arm", pa.string()),
    ("exposure_latency_ms", pa.float64()),
    ("exposure_diversity", pa.float64()),
    ("exposure_expires_at_ms", pa.int64()),
]
_OUTCOME_FIELDS = [
    ("outcome_user", pa.string()),
    ("outcome_at_ms", pa.int64()),
    ("outcome_item", pa.string()),
    ("outcome_action", pa.string()),
    ("outcome_weight", pa.float64()),
    ("outcome_served_at_ms", pa.int64()),
    ("outcome_arm", pa.string()),
    ("outcome_expires_at_ms", pa.int64()),
]
_FIELD_GROUPS = (_USER_FIELDS, _POPULARITY_FIELDS, _EXPOSURE_FIELDS, _OUTCOME_FIELDS)
_SNAPSHOT_SCHEMA = pa.schema([f for group in _FIELD_GROUPS for f in group])
# Users per record batch: building one batch holds the GIL, so small batches keep the event loop (which
# serves requests while the snapshot is written on a worker thread) from stalling.
SNAPSHOT_BATCH_USERS = 1000
SNAPSHOT_BATCH_COUNTS = 50_000
# Exposures or outcomes per record batch (whole users: a batch may hold one user's more).
SNAPSHOT_BATCH_ENTRIES = 20_000


@dataclass(frozen=True, slots=True)
class _SnapshotState:
    known: list[str]
    profiles: dict[str, UserProfile]
    histories: dict[str, History]
    seen: dict[str, seen_sets.SeenSet]
    # List name -> (item ids, epochs, values) and -> half-life (server/popularity.py).
    popularity: dict[str, tuple[list[str], np.ndarray, np.ndarray]]
    half_lives: dict[str, float]
    newest_ms: int | None
    exposures: dict[str, Exposures]
    outcomes: dict[str, Outcomes]
    now_ms: int  # entries expired by then are left out


def _write_snapshot(path: Path, lsn: int, state: _SnapshotState) -> None:
    user_ids = state.known
    user_batches = (
        _snapshot_batch(user_ids[start : start + SNAPSHOT_BATCH_USERS], state)
        for start in range(0, len(user_ids), SNAPSHOT_BATCH_USERS)
    )
    metadata = {
        "format": _SNAPSHOT_FORMAT,
        "lsn": str(lsn),
        "newest_ms": "" if state.newest_ms is None else str(state.newest_ms),
        # Stored values are only meaningful under the half-life they were counted with.
        "popularity_lists": json.dumps(state.half_lives),
    }
    schema = _SNAPSHOT_SCHEMA.with_metadata(metadata)
    batches = itertools.chain(
        user_batches,
        _popularity_batches(state.popularity),
        _exposure_batches(state.exposures, state.now_ms),
        _outcome_batches(state.outcomes, state.now_ms),
    )
    _write_atomically(path, schema, batches)


def _group_batch(group: list[tuple[str, pa.DataType]], n: int, arrays: list[pa.Array]) -> pa.RecordBatch:
    """A batch of `n` rows of one kind: `arrays` fill that kind's columns, nulls every other column."""
    columns: list[pa.Array] = []
    for fields in _FIELD_GROUPS:
        columns += arrays if fields is group else [pa.nulls(n, field_type) for _, field_type in fields]
    return pa.RecordBatch.from_arrays(columns, schema=_SNAPSHOT_SCHEMA)


def _chunks_of_users(held: dict[str, tuple[Entry, ...]], now_ms: int) -> Iterator[list[tuple[str, Entry]]]:
    """(user, entry) pairs of the unexpired entries, about SNAPSHOT_BATCH_ENTRIES at a time."""
    chunk: list[tuple[str, Entry]] = []
    for user_id, entries in held.items():
        chunk.extend((user_id, e) for e in entries if e[-1] > now_ms)
        if len(chunk) >= SNAPSHOT_BATCH_ENTRIES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _exposure_batches(held: dict[str, Exposures], now_ms: int) -> Iterator[pa.RecordBatch]:
    for chunk in _chunks_of_users(held, now_ms):
        users, entries = zip(*chunk, strict=True)
        served_at, items, arms, latency, diversity, expires = zip(*entries, strict=True)
        arrays = [
            pa.array(users, pa.string()),
            pa.array(served_at, pa.int64()),
            pa.array(items, pa.list_(pa.string())),
            pa.array(arms, pa.string()),
            pa.array(latency, pa.float64()),
            pa.array(diversity, pa.float64()),
            pa.array(expires, pa.int64()),
        ]
        yield _group_batch(_EXPOSURE_FIELDS, len(users), arrays)


def _outcome_batches(held: dict[str, Outcomes], now_ms: int) -> Iterator[pa.RecordBatch]:
    for chunk in _chunks_of_users(held, now_ms):
        users, entries = zip(*chunk, strict=True)
        at, items, actions, weights, served_at, arms, expires = zip(*entries, strict=True)
        arrays = [
            pa.array(users, pa.string()),
            pa.array(at, pa.int64()),
            pa.array(items, pa.string()),
            pa.array(actions, pa.string()),
            pa.array(weights, pa.float64()),
            pa.array(served_at, pa.int64()),
            pa.array(arms, pa.string()),
            pa.array(expires, pa.int64()),
        ]
        yield _group_batch(_OUTCOME_FIELDS, len(users), arrays)


def _popularity_batches(
    popularity: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
) -> Iterator[pa.RecordBatch]:
    for name, (item_ids, epochs, values) in popularity.items():
        for start in range(0, len(item_ids), SNAPSHOT_BATCH_COUNTS):
            end = start + SNAPSHOT_BATCH_COUNTS
            n = len(item_ids[start:end])
            arrays = [
                pa.array([name] * n, pa.string()),
                pa.array(item_ids[start:end], pa.string()),
                pa.array(epochs[start:end], pa.int64()),
                pa.array(values[start:end], pa.float64()),
            ]
            yield _group_batch(_POPULARITY_FIELDS, n, arrays)


def _snapshot_batch(user_ids: list[str], state: _SnapshotState) -> pa.RecordBatch:
    profiles, histories = state.profiles, state.histories
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
    user_seen = [state.seen.get(u, seen_sets.EMPTY) for u in user_ids]
    seen_offsets = pa.array(np.r_[0, np.cumsum([len(hashes) for hashes, _ in user_seen])].astype(np.int32))
    seen_hashes = pa.ListArray.from_arrays(
        seen_offsets, pa.array(np.concatenate([hashes for hashes, _ in user_seen]), pa.uint64())
    )
    seen_times = pa.ListArray.from_arrays(
        seen_offsets, pa.array(np.concatenate([times for _, times in user_seen]), pa.int64())
    )
    arrays = [
        pa.array(user_ids, pa.string()),
        has_profile,
        embedding,
        attributes,
        history,
        seen_hashes,
        seen_times,
    ]
    return _group_batch(_USER_FIELDS, len(user_ids), arrays)


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
