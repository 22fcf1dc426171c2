"""One logical shard: an hnswlib index, its write-ahead log and its snapshots.

Concurrency, in one place:
- `_lock` (writer-preferring RW lock) guards the hnswlib index and the label tables. Searches, fetches
  and snapshot saves read; adds, deletes, resizes and ef changes write.
- ef is global to an hnswlib index, so a search at the index's current ef runs under the read lock
  alongside others; a search at another ef takes the write lock, sets ef, and downgrades to a read lock
  for the query itself. A steady ef (the normal case) never takes the write lock.
- Writes are logged (WAL append + fsync, concurrent writers share the sync) and then applied strictly in
  LSN order (`_turn`). That ordering is what makes a replay reproduce the live state, and it gives every
  moment an `_applied_lsn` such that all records up to it are fully in the index.
- Large upserts are applied in chunks, releasing the write lock in between so searches are not blocked
  for the whole batch. A snapshot may therefore catch a record half applied; that is harmless because
  the snapshot claims only `_applied_lsn`, and re-applying an upsert or delete is idempotent.
- While a shard receives a rebalancing copy (`start_receiving`), live writes record the labels they touch
  and a backfill upsert skips those labels, so a copy scanned before a live write can never overwrite it
  or bring back an item it deleted. `_touch_lock` orders the two: a backfill filters and takes its LSN
  under it, a live write registers its labels under it before taking its LSN, so either the backfill
  sees the label as touched or it is logged (and applied) before the live write.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import hnswlib
import numpy as np
from numpy.typing import NDArray

from server import _core
from shards import metrics, oplog, snapshot
from shards.attributes import AttributeTable, CompiledFilter
from shards.changes import DEFAULT_RETAIN_BYTES, Change, ChangeLog
from shards.records import (
    NO_LABEL,
    AttributeFilter,
    ErrorKind,
    Exclusions,
    IndexParams,
    QueryFilter,
    RecordBatch,
    ShardError,
    ShardHits,
    ShardStats,
    as_labels,
    check_ef,
    check_exclude,
    check_filters,
    check_k,
    check_queries,
    invalid,
    is_excluded,
)
from shards.rwlock import RWLock
from shards.wal import WALError, WriteAheadLog

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EVERY_RECORDS = 50_000
DEFAULT_ADD_CHUNK = 512
MAX_SCAN_BATCH = 65_536  # keeps one Scan message well under the 64 MiB gRPC message limit
# Filtered or excluding searches: the first fetch is k / selectivity times this (exclusions add k), and a
# query still short of k hits fetches this many times more, until the shard has no more matching items.
OVERFETCH_SLACK = 1.5
OVERFETCH_GROWTH = 4


def first_fetch(k: int, selectivity: float, excluded: int, live: int) -> int:
    """How many hits to ask hnswlib for so that about k pass the filter and the `excluded` labels.
    Over-fetching by all excluded items would cost a search at k + 500 per shard for a user with 10,000
    seen items spread over the catalogue, of which a few lie near the query; so the first fetch adds at
    most k for them, and a query left short searches again (`excluding_refetch`, or growing rounds
    under a filter)."""
    if selectivity >= 1.0:
        want = float(k + min(excluded, k))
    else:
        want = k / max(selectivity, 1.0 / live) * OVERFETCH_SLACK + min(excluded, k)
    return int(min(live, max(k, math.ceil(want))))


def excluding_refetch(k: int, held: int, live: int) -> int:
    """The second fetch of an unfiltered query short of k after the first: by every excluded item held
    here, which suffices whatever their distance (the user's nearest items may all be seen)."""
    return min(live, k + held)


class ShardIndex:
    """Thread-safe. `data_dir=None` keeps everything in memory (tests, benchmarks): no WAL, no snapshots."""

    def __init__(
        self,
        shard_id: int,
        params: IndexParams,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        snapshot_every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
        group_commit_window_s: float = 0.002,
        add_chunk: int = DEFAULT_ADD_CHUNK,
        feed_retain_bytes: int = DEFAULT_RETAIN_BYTES,
    ) -> None:
        self.shard_id = shard_id
        self.params = params
        self._snapshot_every = snapshot_every_records
        self._add_chunk = max(1, add_chunk)
        self._lock = RWLock()
        self._records: dict[int, tuple[str, bytes]] = {}  # live label -> (item_id, payload)
        self._attributes = AttributeTable()  # live labels' attributes, for filtered search
        # Labels in the graph marked deleted, and perhaps some whose slot was reused (_prune_deleted).
        self._deleted: set[int] = set()
        self._ef = params.ef_search
        self._turn = threading.Condition()  # LSN-ordered application
        self._applied_lsn = 0
        self._next_memory_lsn = 1
        self._closed = False
        self._snapshot_mutex = threading.Lock()
        self._snapshot_lsn = 0
        self._unsnapshotted = 0  # items applied since the last snapshot started
        self._background: threading.Thread | None = None
        self._background_lock = threading.Lock()
        self._touch_lock = threading.Lock()
        self._touched: set[int] | None = None  # labels written live while receiving a rebalancing copy
        self._dir = Path(data_dir) if data_dir is not None else None
        self._wal: WriteAheadLog | None = None
        self.snapshot_time = time.time()  # wall clock of the last snapshot (of opening, before one)
        if self._dir is None:
            self._index = self._new_index(params.initial_capacity)
        else:
            metrics.opening(shard_id)
            try:
                self._index = self._open(self._dir, group_commit_window_s)
            except BaseException:
                metrics.opened(None, shard_id)
                raise
        self.changes = ChangeLog(
            self._applied_lsn + 1, feed_retain_bytes, self._logged_changes if self._wal is not None else None
        )
        metrics.opened(self, shard_id)

    # ------------------------------------------------------------------ opening
    def _new_index(self, capacity: int) -> hnswlib.Index:
        index = hnswlib.Index(space=self.params.space, dim=self.params.dim)
        index.init_index(
            max_elements=capacity,
            M=self.params.m,
            ef_construction=self.params.ef_construction,
            allow_replace_deleted=True,
        )
        index.set_ef(self._ef)
        return index

    def _open(self, data_dir: Path, group_commit_window_s: float) -> hnswlib.Index:
        data_dir.mkdir(parents=True, exist_ok=True)
        snapshot.remove_temp_dirs(data_dir)
        found = snapshot.list_snapshots(data_dir)
        snapshot_lsn = 0
        if found:
            state = snapshot.load(found[-1][1], self.params)
            self.snapshot_time = found[-1][1].stat().st_mtime
            index = state.index
            index.set_ef(self._ef)
            self._records, self._deleted, snapshot_lsn = state.records, state.deleted, state.lsn
            self._attributes.set(list(self._records), [payload for _, payload in self._records.values()])
        else:
            index = self._new_index(self.params.initial_capacity)
        self._index = index
        wal = WriteAheadLog(data_dir / "wal", group_commit_window_s, first_lsn=snapshot_lsn + 1)
        if wal.first_lsn > snapshot_lsn + 1 or wal.next_lsn <= snapshot_lsn:
            raise ShardError(
                f"shard {self.shard_id}: WAL holds LSNs {wal.first_lsn}..{wal.next_lsn - 1} but the snapshot "
                f"covers up to {snapshot_lsn}: records are missing",
                ErrorKind.INTERNAL,
            )
        replayed = 0
        for _, record in wal.replay(after_lsn=snapshot_lsn):
            op = oplog.decode(record)
            if isinstance(op, oplog.UpsertOp):
                self._apply_upsert(op.batch)
                replayed += len(op.batch)
            else:
                self._apply_delete(op.labels)
                replayed += len(op.labels)
        self._wal = wal
        self._applied_lsn = wal.next_lsn - 1
        self._snapshot_lsn = snapshot_lsn
        self._unsnapshotted = replayed
        if replayed:
            log.info(
                "shard %d: replayed %d items from the WAL after LSN %d", self.shard_id, replayed, snapshot_lsn
            )
        return index

    # ------------------------------------------------------------------ writes
    def upsert(self, batch: RecordBatch, *, backfill: bool = False) -> int:
        """Insert or replace items; returns how many. Durable (fsynced) before it returns.

        `backfill=True` marks a rebalancing copy: while the shard is receiving, records whose labels a
        live write touched since `start_receiving` are skipped (the live write is newer); the count
        returned is what was written."""
        self._check_open()
        batch = batch.validated(self.params.dim)
        if not len(batch):
            return 0
        if backfill:
            with self._touch_lock:
                if self._touched:
                    touched = self._touched
                    keep = [i for i, label in enumerate(batch.labels.tolist()) if label not in touched]
                    batch = batch.take(keep)
                    if not len(batch):
                        return 0
                final = batch
                lsn = self._log(lambda: oplog.encode_upsert(final))
        else:
            self._touch(batch.labels)
            final = batch
            lsn = self._log(lambda: oplog.encode_upsert(final))
        self._in_turn(lsn, lambda: self._apply_upsert(final), lambda: self.changes.append(lsn, upserts=final))
        self._count_applied(len(final))
        return len(final)

    def delete(self, labels: NDArray[np.uint64] | Sequence[int]) -> int:
        """Returns how many of the labels were live (and are now deleted)."""
        self._check_open()
        arr = as_labels(labels)
        if not len(arr):
            return 0
        self._touch(arr)
        lsn = self._log(lambda: oplog.encode_delete(arr))
        deleted = self._in_turn(
            lsn, lambda: self._apply_delete(arr), lambda: self.changes.append(lsn, deletes=arr)
        )
        self._count_applied(len(arr))
        return deleted

    def _touch(self, labels: NDArray[np.uint64]) -> None:
        # Unlocked test for the common case (not receiving). Receiving starts only while the node holds
        # back all writes (a layout change), so no live write can race past this test unregistered.
        if self._touched is None:
            return
        with self._touch_lock:
            if self._touched is not None:
                self._touched.update(labels.tolist())

    # ------------------------------------------------------------------ rebalancing
    def start_receiving(self) -> None:
        """Live writes from now on win over backfill copies of the same labels (see the module doc)."""
        with self._touch_lock:
            if self._touched is None:
                self._touched = set()

    def stop_receiving(self) -> None:
        with self._touch_lock:
            self._touched = None

    @property
    def receiving(self) -> bool:
        return self._touched is not None

    def _log(self, encode: Callable[[], bytes]) -> int:
        if self._wal is None:
            with self._turn:
                lsn = self._next_memory_lsn
                self._next_memory_lsn += 1
                return lsn
        try:
            return self._wal.append([encode()])
        except WALError as exc:
            raise ShardError(
                f"shard {self.shard_id}: write-ahead log failed: {exc}", ErrorKind.UNAVAILABLE
            ) from exc

    def _in_turn(self, lsn: int, apply: Callable[[], int], publish: Callable[[], None]) -> int:
        """Applies the write with this LSN after every earlier one, then publishes it to the change feed
        (still in LSN order: the next writer waits until this one has advanced `_applied_lsn`)."""
        with self._turn:
            while self._applied_lsn != lsn - 1:
                self._turn.wait()
        applied = False
        try:
            result = apply()
            applied = True
            return result
        finally:
            # Advance even on failure, or every later writer would wait forever.
            with self._turn:
                if applied:
                    publish()
                else:
                    self.changes.skip(lsn)
                self._applied_lsn = lsn
                self._turn.notify_all()

    def _logged_changes(self, after: int) -> Iterator[Change] | None:
        """The change feed's older tail, re-read from the WAL; None once segments holding it are gone."""
        wal = self._wal
        if wal is None or wal.first_lsn > after + 1:
            return None
        return self._replay_changes(wal, after)

    @staticmethod
    def _replay_changes(wal: WriteAheadLog, after: int) -> Iterator[Change]:
        try:
            for lsn, record in wal.replay(after_lsn=after):
                op = oplog.decode(record)
                if isinstance(op, oplog.UpsertOp):
                    yield Change(lsn, 0.0, upserts=op.batch)
                else:
                    yield Change(lsn, 0.0, deletes=op.labels)
        except (OSError, WALError):
            # A snapshot dropped the segment meanwhile: what was read stands, the next read resets.
            return

    def _apply_upsert(self, batch: RecordBatch) -> int:
        for start in range(0, len(batch), self._add_chunk):
            part = batch.take(slice(start, start + self._add_chunk))
            with self._lock.write():
                self._apply_upsert_locked(part)
        return len(batch)

    def _apply_upsert_locked(self, part: RecordBatch) -> None:
        """Slot management, so that an index under steady upserts and deletes stays bounded:
        - a live label is updated in its own slot;
        - a deleted label still in the graph is unmarked and updated in its own slot;
        - any other label takes the slot of some deleted label (hnswlib's `replace_deleted`), or a new
          slot when none is vacant. hnswlib must never be asked to replace for a label it holds: it would
          move the label to a vacant slot and orphan the old one, still linked in the graph.
        hnswlib picks the vacant slot and does not say whose it was, so `_deleted` may keep labels whose
        slot went to another label; `_prune_deleted` keeps that bounded and `_deleted_in_graph` is exact.
        Which slot a label gets differs between a live run and a WAL replay; labels, vectors and the
        live set do not."""
        labels = part.labels.tolist()
        in_place = np.zeros(len(labels), dtype=np.bool_)
        revived = 0
        for i, label in enumerate(labels):
            if label in self._records:
                in_place[i] = True
                continue
            if label in self._deleted:
                self._deleted.discard(label)
                try:
                    self._index.unmark_deleted(label)
                except RuntimeError:
                    continue  # its slot went to another label: a new label now
                in_place[i] = True
                revived += 1
        fresh = len(labels) - int(in_place.sum())
        used = self._index.get_current_count()
        vacant = used - len(self._records) - revived
        self._ensure_capacity(used + max(0, fresh - vacant))
        threads = self.params.add_threads
        if in_place.any():
            self._index.add_items(
                part.vectors[in_place], part.labels[in_place], num_threads=threads, replace_deleted=False
            )
        if fresh:
            new = ~in_place
            self._index.add_items(
                part.vectors[new], part.labels[new], num_threads=threads, replace_deleted=True
            )
        for label, item_id, payload in zip(labels, part.item_ids, part.payloads, strict=True):
            self._records[label] = (item_id, payload)
        self._attributes.set(labels, part.payloads)
        if fresh and vacant:
            self._prune_deleted()

    def _prune_deleted(self) -> None:
        """Drops from `_deleted` the labels whose slots were reused. Reading the graph's labels costs
        O(items), so it runs only once the stale labels outnumber the shard's live items by a quarter
        (plus the vacant slots): amortised O(1) per write."""
        vacant = self._index.get_current_count() - len(self._records)
        if len(self._deleted) <= 2 * vacant + max(1024, len(self._records) // 4):
            return
        self._deleted = self._deleted_in_graph()

    def _deleted_in_graph(self) -> set[int]:
        """Exactly the labels in the graph marked deleted (their slots are the vacant ones)."""
        return set(self._index.get_ids_list()).difference(self._records)

    def _ensure_capacity(self, needed: int) -> None:
        capacity = self._index.get_max_elements()
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        self._index.resize_index(capacity)

    def _apply_delete(self, labels: NDArray[np.uint64]) -> int:
        gone = []
        with self._lock.write():
            for label in labels.tolist():
                if self._records.pop(label, None) is not None:
                    self._index.mark_deleted(label)
                    self._deleted.add(label)
                    gone.append(label)
            self._attributes.remove(gone)
        return len(gone)

    # ------------------------------------------------------------------ reads
    def search(
        self,
        queries: NDArray[np.float32],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> ShardHits:
        """Top-k by inner product for each query row; `ef=0` means the configured ef_search. `exclude[i]`
        lists labels query i must not return; `filters[i]` the attribute values its hits must have."""
        q = check_queries(queries, self.params.dim)
        check_k(k)
        check_ef(ef)
        return self.search_checked(q, k, ef, check_exclude(exclude, len(q)), check_filters(filters, len(q)))

    def search_checked(
        self,
        q: NDArray[np.float32],
        k: int,
        ef: int,
        exclude: Sequence[NDArray[np.uint64]] | None,
        filters: Sequence[AttributeFilter | None] | None = None,
    ) -> ShardHits:
        """`search` for input the host has already validated once for all its shards (exclusion arrays
        sorted and unique, best as the `Exclusions` check_exclude returns, so that their CSR is built once
        per call, not once per shard): with 20 shards per query, validating per shard cost more than a
        small shard's search."""
        self._check_open()
        if not len(q):
            return ShardHits.empty(0, k)
        self._acquire_read_at_ef(max(ef or self.params.ef_search, k))
        try:
            live = len(self._records)
            if live == 0:
                return ShardHits.empty(len(q), k)
            if exclude and not filters:
                found = self._excluding_search(q, k, live, Exclusions.of(exclude))
                if found is not None:
                    return found
            if exclude or filters:
                hits = ShardHits.empty(len(q), k)
                self._constrained_search(q, k, live, hits, exclude, filters)
                return hits
            fetch_k = min(k, live)
            labels, distances = self._knn(q, fetch_k)
        finally:
            self._lock.release_read()
        if fetch_k == k:  # hnswlib's fresh arrays are the hits as they are
            return ShardHits(labels, self._scores(distances))
        hits = ShardHits.empty(len(q), k)
        hits.labels[:, :fetch_k] = labels
        hits.scores[:, :fetch_k] = self._scores(distances)
        return hits

    def _scores(self, distances: NDArray[np.float32]) -> NDArray[np.float32]:
        return (-distances if self.params.space == "l2" else 1.0 - distances).astype(np.float32, copy=False)

    def _excluding_search(
        self,
        q: NDArray[np.float32],
        k: int,
        live: int,
        exclude: Exclusions,
    ) -> ShardHits | None:
        """Exclusions without a filter, the case of every warm user (their seen set): one search
        over-fetching a little, the excluded hits dropped natively for every query at once
        (`_core.exclude_hits`, a binary search per hit), and for the queries left short one more search
        over-fetching by every excluded item held here (counted only then: a binary search of the whole
        list per shard cost more than the search). None in the rare case that an approximate search still
        returned too few, for the general path to grow the fetch."""
        fetch = first_fetch(k, 1.0, exclude.longest, live)
        labels, distances = self._knn(q, fetch)
        out_labels, out_scores, kept = _core.exclude_hits(
            labels, self._scores(distances), exclude.labels, exclude.offsets, k
        )
        if fetch >= live:  # every item here was fetched: a row short of k holds all there is
            return ShardHits(out_labels, out_scores)
        short = np.flatnonzero(kept < k)
        if not len(short):
            return ShardHits(out_labels, out_scores)
        held = max(self._attributes.count_held(exclude[row]) for row in short.tolist())
        fetch = excluding_refetch(k, held, live)
        again = exclude.take(short)
        labels, distances = self._knn(q[short], fetch)
        got_labels, got_scores, got_kept = _core.exclude_hits(
            labels, self._scores(distances), again.labels, again.offsets, k
        )
        if fetch < live and bool((got_kept < k).any()):
            return None
        out_labels[short] = got_labels
        out_scores[short] = got_scores
        return ShardHits(out_labels, out_scores)

    def _constrained_search(
        self,
        q: NDArray[np.float32],
        k: int,
        live: int,
        hits: ShardHits,
        exclude: Sequence[NDArray[np.uint64]] | None,
        filters: Sequence[AttributeFilter | None] | None,
    ) -> None:
        """Search, then drop hits that are excluded or fail the filter, with adaptive over-fetch: the
        first fetch is sized from the filter's estimated selectivity here; a query left with fewer than
        k hits while this shard holds matching items it has not returned yet searches again, fetching
        OVERFETCH_GROWTH times more, until it has k or has seen every matching item. Runs under the read
        lock (the attribute table is read-locked with the index)."""
        n = len(q)
        compiled: dict[AttributeFilter, CompiledFilter] = {}
        wanted: list[CompiledFilter | None] = []
        for f in filters or [None] * n:
            if f is not None and f not in compiled:
                compiled[f] = self._attributes.compile(f)
            wanted.append(None if f is None else compiled[f])
        fetch: dict[int, int] = {}
        for i in range(n):
            c = wanted[i]
            if c is not None and c.bound == 0:
                continue  # nothing here can match: the row stays empty
            excluded = len(exclude[i]) if exclude is not None else 0
            fetch[i] = first_fetch(k, c.selectivity if c is not None else 1.0, excluded, live)
        while fetch:
            by_size: dict[int, list[int]] = {}
            for i, size in fetch.items():
                by_size.setdefault(size, []).append(i)
            again: dict[int, int] = {}
            for size, members in by_size.items():
                rows = np.asarray(members)
                labels, distances = self._knn(q[rows], size)
                passing = labels != NO_LABEL
                filtered = [(row, c) for row, i in enumerate(members) if (c := wanted[i]) is not None]
                if filtered:
                    slots = self._attributes.slots_of(labels[[row for row, _ in filtered]])
                    for j, (row, c) in enumerate(filtered):
                        passing[row] &= c.matches(slots[j])
                matched = passing.sum(axis=1)  # matching hits, excluded ones included
                if exclude is not None:
                    for row, i in enumerate(members):
                        if len(exclude[i]):
                            passing[row] &= ~is_excluded(labels[row], exclude[i])
                # The first k passing hits of each row, in order, moved to the front of the row.
                rank = np.cumsum(passing, axis=1)
                take = passing & (rank <= k)
                r, col = np.nonzero(take)
                hits.labels[rows] = NO_LABEL  # an earlier, smaller fetch may have filled these rows
                hits.scores[rows] = -np.inf
                hits.labels[rows[r], rank[r, col] - 1] = labels[r, col]
                hits.scores[rows[r], rank[r, col] - 1] = self._scores(distances[r, col])
                if size >= live:
                    continue
                kept = take.sum(axis=1)
                for row in np.flatnonzero(kept < k).tolist():
                    c = wanted[members[row]]
                    if matched[row] < (c.count() if c is not None else live):
                        again[members[row]] = min(live, size * OVERFETCH_GROWTH)
            fetch = again

    def _acquire_read_at_ef(self, ef: int) -> None:
        """Returns holding the read lock with the index's ef equal to `ef`."""
        self._lock.acquire_read()
        if self._ef == ef:
            return
        self._lock.release_read()
        self._lock.acquire_write()
        try:
            if self._ef != ef:
                self._index.set_ef(ef)
                self._ef = ef
        except BaseException:
            self._lock.release_write()
            raise
        self._lock.downgrade()

    def _knn(self, q: NDArray[np.float32], k: int) -> tuple[NDArray[np.uint64], NDArray[np.float32]]:
        # One batched call; parallelism comes from searching many shards at once, hence one thread.
        try:
            labels, distances = self._index.knn_query(q, k=k, num_threads=1)
            return labels.astype(np.uint64, copy=False), distances
        except RuntimeError:
            pass
        # hnswlib refuses to return a row shorter than k (it can happen with many deletions); retry row by
        # row with smaller k. Rare, so simplicity beats speed here.
        labels = np.full((len(q), k), NO_LABEL, dtype=np.uint64)
        distances = np.full((len(q), k), np.inf, dtype=np.float32)
        for row in range(len(q)):
            kk = k
            while kk > 0:
                try:
                    got_labels, got_distances = self._index.knn_query(q[row : row + 1], k=kk, num_threads=1)
                except RuntimeError:
                    kk //= 2
                    continue
                labels[row, :kk] = got_labels[0]
                distances[row, :kk] = got_distances[0]
                break
        return labels, distances

    def fetch(self, labels: NDArray[np.uint64] | Sequence[int]) -> RecordBatch:
        """The live items among `labels`, in request order, without duplicates."""
        self._check_open()
        wanted = list(dict.fromkeys(as_labels(labels).tolist()))
        with self._lock.read():
            found = [label for label in wanted if label in self._records]
            if not found:
                return RecordBatch.empty(self.params.dim)
            vectors = np.asarray(self._index.get_items(found), dtype=np.float32)
            meta = [self._records[label] for label in found]
        return RecordBatch(
            np.array(found, dtype=np.uint64),
            [m[0] for m in meta],
            vectors.reshape(len(found), self.params.dim),
            [m[1] for m in meta],
        )

    def scan(self, batch_size: int = 1024) -> Iterator[RecordBatch]:
        """Live items in batches. Not a point-in-time view: items written during the scan may or may not
        appear, deleted ones are skipped. Arguments are checked now, not at the first iteration."""
        if not 1 <= batch_size <= MAX_SCAN_BATCH:
            raise invalid(f"batch_size: must be in 1..{MAX_SCAN_BATCH}, got {batch_size}")
        self._check_open()
        with self._lock.read():
            labels = list(self._records)
        return self._scan(labels, batch_size)

    def _scan(self, labels: list[int], batch_size: int) -> Iterator[RecordBatch]:
        for start in range(0, len(labels), batch_size):
            batch = self.fetch(labels[start : start + batch_size])
            if len(batch):
                yield batch

    def stats(self) -> ShardStats:
        with self._lock.read():
            items = len(self._records)
            deleted = self._index.get_current_count() - items  # vacant slots, reused by the next adds
            capacity = self._index.get_max_elements()
        return ShardStats(self.shard_id, items, deleted, capacity, self._wal.size_bytes if self._wal else 0)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def persistent(self) -> bool:
        """Whether the shard keeps a WAL and snapshots (not an in-memory test shard)."""
        return self._wal is not None

    @property
    def unsnapshotted(self) -> int:
        """Items applied since the last snapshot began (what a restart would replay, about)."""
        return self._unsnapshotted

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> int | None:
        """Persist the state up to the last fully applied LSN; returns that LSN (None in memory mode).
        Searches continue meanwhile; writes wait only while the index file is being saved."""
        if self._wal is None or self._dir is None:
            return None
        with self._snapshot_mutex:
            began = time.monotonic()
            self._wal.rotate()
            temp = None
            self._lock.acquire_read()
            try:
                with self._turn:
                    lsn = self._applied_lsn
                if lsn == self._snapshot_lsn:
                    return lsn
                with self._background_lock:
                    self._unsnapshotted = 0
                temp = snapshot.new_temp_dir(self._dir)
                self._index.save_index(str(temp / snapshot.INDEX_FILE))
                records, deleted = dict(self._records), self._deleted_in_graph()
                capacity = self._index.get_max_elements()
            except BaseException:
                if temp is not None:
                    snapshot.remove_temp_dirs(self._dir)
                raise
            finally:
                self._lock.release_read()
            snapshot.finish(temp, self._dir, lsn, self.params, capacity, records, deleted)
            self._snapshot_lsn = lsn
            self.snapshot_time = time.time()
            metrics.SNAPSHOT_DURATION.observe(time.monotonic() - began)
            # Segments holding only LSNs <= lsn are now redundant; newer ones (even rotated) stay.
            self._wal.drop_before(lsn + 1)
            snapshot.remove_older(self._dir, lsn)
            return lsn

    def _count_applied(self, items: int) -> None:
        if self._wal is None:
            return
        with self._background_lock:
            self._unsnapshotted += items
            if self._unsnapshotted < self._snapshot_every or self._closed:
                return
            if self._background is None or not self._background.is_alive():
                # In the background so the writer that crossed the threshold is not the one who waits.
                self._background = threading.Thread(
                    target=self._snapshot_in_background, name=f"shard-{self.shard_id}-snapshot", daemon=True
                )
                self._background.start()

    def _snapshot_in_background(self) -> None:
        try:
            self.snapshot()
        except Exception:
            log.exception("shard %d: background snapshot failed", self.shard_id)

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise ShardError(f"shard {self.shard_id} is closed", ErrorKind.UNAVAILABLE)

    def destroy(self) -> None:
        """Closes the shard without a final snapshot and deletes its files: the shard moved elsewhere."""
        with self._background_lock:
            self._closed = True
            background = self._background
        if background is not None:
            background.join()
        # Searches still running hold the read lock; wait for them before the files go.
        with self._lock.write():
            if self._wal is not None:
                self._wal.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        """Takes a final snapshot (so the next open replays nothing) and closes the WAL."""
        if self._closed:
            return
        with self._background_lock:
            self._closed = True
            background = self._background
        if background is not None:
            background.join()
        if self._wal is not None:
            try:
                self.snapshot()
            finally:
                self._wal.close()
