"""A shard node's shards: many ShardIndex in one process, searched and written in parallel.

Two thread pools, so that writers waiting on fsync or on a shard's write lock never occupy the threads
that searches need: searches run on `search_threads` workers (hnswlib releases the GIL, so they use
every core), writes on one worker per shard (they mostly wait on disk).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from shards import metrics
from shards.changes import DEFAULT_RETAIN_BYTES, FeedRead
from shards.index import DEFAULT_SNAPSHOT_EVERY_RECORDS, ShardIndex
from shards.records import (
    AttributeFilter,
    ErrorKind,
    Exclusions,
    IndexParams,
    NodeStats,
    QueryFilter,
    RecordBatch,
    ShardError,
    ShardHits,
    check_ef,
    check_exclude,
    check_filters,
    check_k,
    check_queries,
    unknown_shard,
)

FEED_HEARTBEAT_S = 2.0


class ShardHost:
    def __init__(
        self,
        params: IndexParams,
        data_dir: str | os.PathLike[str] | None,
        shard_ids: Iterable[int],
        *,
        search_threads: int | None = None,
        snapshot_every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
        group_commit_window_s: float = 0.002,
        feed_retain_bytes: int = DEFAULT_RETAIN_BYTES,
    ) -> None:
        self.params = params
        ids = sorted(set(shard_ids))
        self._search_threads = search_threads or os.cpu_count() or 2
        self._search_pool = cf.ThreadPoolExecutor(self._search_threads, "shard-search")
        # Twice the shards: concurrent writers to one shard must overlap to share its fsync.
        self._write_pool = cf.ThreadPoolExecutor(max(4, 2 * len(ids)), "shard-write")
        self._root = Path(data_dir) if data_dir is not None else None
        self._snapshot_every = snapshot_every_records
        self._group_commit_window_s = group_commit_window_s
        self._feed_retain_bytes = feed_retain_bytes
        # Replaced, never mutated, when shards come and go (rebalancing), so readers need no lock.
        self._shards: dict[int, ShardIndex] = {}
        self._membership = threading.Lock()
        self._closed = False
        self.add_shards(ids)

    def _open_shard(self, shard_id: int) -> ShardIndex:
        return ShardIndex(
            shard_id,
            self.params,
            self._shard_dir(shard_id),
            snapshot_every_records=self._snapshot_every,
            group_commit_window_s=self._group_commit_window_s,
            feed_retain_bytes=self._feed_retain_bytes,
        )

    def _shard_dir(self, shard_id: int) -> Path | None:
        return self._root / f"shard-{shard_id:05d}" if self._root is not None else None

    def add_shards(self, shard_ids: Iterable[int], *, fresh: bool = False) -> list[int]:
        """Opens the listed shards this host does not have yet; returns those it opened. `fresh=True`
        first deletes what an earlier stint of the shard here left on disk: a shard that comes back to a
        node after moving away must not resurrect items deleted elsewhere meanwhile."""
        with self._membership:
            new = [i for i in dict.fromkeys(shard_ids) if i not in self._shards]
            if fresh:
                for shard_id in new:
                    path = self._shard_dir(shard_id)
                    if path is not None:
                        shutil.rmtree(path, ignore_errors=True)
            # Opening means loading a snapshot and replaying a WAL: do the shards side by side.
            opened = dict(zip(new, self._write_pool.map(self._open_shard, new), strict=True))
            self._shards = dict(sorted({**self._shards, **opened}.items()))
        return new

    def drop_shards(self, shard_ids: Iterable[int]) -> list[int]:
        """Stops hosting the listed shards and deletes their files; returns those it dropped. Searches
        already running on them finish; later ones get UNAVAILABLE for those shards."""
        with self._membership:
            gone = [i for i in dict.fromkeys(shard_ids) if i in self._shards]
            remaining = {i: shard for i, shard in self._shards.items() if i not in gone}
            dropped = [self._shards[i] for i in gone]
            self._shards = remaining
        for shard in dropped:
            shard.destroy()
        return gone

    def set_receiving(self, shard_ids: Iterable[int]) -> None:
        """Exactly the listed shards take rebalancing copies (see ShardIndex.start_receiving)."""
        wanted = set(shard_ids)
        for shard_id, shard in self._shards.items():
            if shard_id in wanted:
                shard.start_receiving()
            else:
                shard.stop_receiving()

    @property
    def dim(self) -> int:
        return self.params.dim

    @property
    def shard_ids(self) -> list[int]:
        return list(self._shards)

    def shard(self, shard_id: int) -> ShardIndex:
        try:
            return self._shards[shard_id]
        except KeyError:
            raise unknown_shard(shard_id) from None

    def start_search(
        self,
        queries: NDArray[np.float32],
        shard_ids: Sequence[int],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> dict[int, cf.Future[ShardHits] | ShardError]:
        """Validates (ShardError(INVALID_ARGUMENT) for bad input) and starts one search per listed shard;
        for asyncio callers that wait on the futures themselves instead of blocking a thread.
        `exclude[i]`: labels query i must not return; `filters[i]`: attribute values its hits must have."""
        q = check_queries(queries, self.dim)
        check_k(k)
        check_ef(ef)
        excluded = check_exclude(exclude, len(q))
        filtered = check_filters(filters, len(q))
        started: dict[int, cf.Future[ShardHits] | ShardError] = {}
        work: list[tuple[ShardIndex, cf.Future[ShardHits]]] = []
        for shard_id in dict.fromkeys(shard_ids):
            shard = self._shards.get(shard_id)
            if shard is None:
                started[shard_id] = unknown_shard(shard_id)
            else:
                future: cf.Future[ShardHits] = cf.Future()
                started[shard_id] = future
                work.append((shard, future))
        # One task per pool thread, each searching its share of the shards in turn: a task per shard
        # would hand the GIL between threads (and wake waiters) once per shard, which costs more than a
        # small shard's search itself.
        groups = min(len(work), self._search_threads)
        for g in range(groups):
            self._search_pool.submit(_search_in_turn, work[g::groups], q, k, ef, excluded, filtered)
        return started

    def search(
        self,
        queries: NDArray[np.float32],
        shard_ids: Sequence[int],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        timeout_s: float | None = None,
        *,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> dict[int, ShardHits | ShardError]:
        """Per-shard top-k, keyed by shard id in request order. Bad input raises
        ShardError(INVALID_ARGUMENT); anything else (an unknown shard, a shard that missed the deadline, a
        failing shard) is reported for that shard only."""
        started = self.start_search(queries, shard_ids, k, ef, exclude, filters)
        futures = [f for f in started.values() if isinstance(f, cf.Future)]
        cf.wait(futures, timeout=timeout_s)
        return {shard_id: search_outcome(shard_id, f, timeout_s) for shard_id, f in started.items()}

    def upsert(self, batches: Mapping[int, RecordBatch], *, backfill: bool = False) -> int:
        """Writes every shard's batch concurrently (their fsyncs overlap); returns the number of records.
        Everything is validated before anything is written; if one shard fails after that, the others'
        writes stand and the first error is raised (upserts are idempotent: retrying is safe).
        `backfill`: a rebalancing copy (ShardIndex.upsert); the count excludes skipped records."""
        checked: dict[int, tuple[ShardIndex, RecordBatch]] = {}
        for shard_id, batch in batches.items():
            shard = self.shard(shard_id)
            checked[shard_id] = (shard, batch.validated(self.dim, f"batches[shard {shard_id}]"))
        futures = [
            self._write_pool.submit(functools.partial(shard.upsert, batch, backfill=backfill))
            for shard, batch in checked.values()
            if len(batch)
        ]
        total = 0
        errors: list[BaseException] = []
        for future in futures:
            try:
                total += future.result()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return total

    def delete(self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int]) -> int:
        return self.shard(shard_id).delete(labels)

    def fetch(self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int]) -> RecordBatch:
        return self.shard(shard_id).fetch(labels)

    def scan(self, shard_id: int, batch_size: int = 1024) -> Iterator[RecordBatch]:
        return self.shard(shard_id).scan(batch_size)

    async def follow(
        self, shard_id: int, incarnation: int, after: int, heartbeat_s: float = FEED_HEARTBEAT_S
    ) -> AsyncIterator[FeedRead]:
        """A shard's change feed from a cursor, until the caller stops: changes as they are applied, a
        read with no changes every `heartbeat_s` while nothing happens (the follower's sign of life),
        and a reset as the last read when the cursor cannot be served (see shards.changes)."""
        log = self.shard(shard_id).changes
        position = after
        due = True  # the first read is always sent: it tells the follower its cursor holds
        while True:
            current = self._shards.get(shard_id)
            if current is None or current.changes is not log:
                raise unknown_shard(shard_id)  # the shard moved away (rebalancing) or was reopened
            if log.needs_disk(incarnation, position):
                read = await asyncio.to_thread(log.read, incarnation, position)
            else:
                read = log.read(incarnation, position)  # the ring: only a lock, fine on the loop
            if read.changes or read.reset or due:
                yield read
            if read.reset:
                return
            position = read.position
            due = False
            if not read.changes:
                due = not await log.wait_beyond(position, heartbeat_s)

    def stats(self) -> NodeStats:
        return NodeStats(self.dim, [shard.stats() for shard in self._shards.values()])

    def snapshot_all(self) -> dict[int, int | None]:
        ids = list(self._shards)
        return dict(zip(ids, self._write_pool.map(lambda i: self._shards[i].snapshot(), ids), strict=True))

    def close(self) -> None:
        """Final snapshots (in parallel), then the pools. Closing twice is harmless (several in-process
        frontends of a test may share one host)."""
        with self._membership:
            if self._closed:
                return
            self._closed = True
        list(self._write_pool.map(lambda shard: shard.close(), self._shards.values()))
        self._search_pool.shutdown(wait=True, cancel_futures=True)
        self._write_pool.shutdown(wait=True)

    def __enter__(self) -> ShardHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _search_in_turn(
    work: Sequence[tuple[ShardIndex, cf.Future[ShardHits]]],
    queries: NDArray[np.float32],
    k: int,
    ef: int,
    exclude: Exclusions | None,
    filters: Sequence[AttributeFilter | None] | None,
) -> None:
    # Everything here is per shard; what is per batch (validation, the exclusions' CSR) was done once by
    # start_search.
    for shard, future in work:
        if not future.set_running_or_notify_cancel():
            continue  # the caller stopped waiting (deadline): skip the work
        started = time.thread_time()
        try:
            result = shard.search_checked(queries, k, ef, exclude, filters)
        except BaseException as exc:
            future.set_exception(exc)
            continue
        finally:
            # Counted before the result is handed over, so a reader after the search sees it.
            metrics.SEARCH_CPU.inc(time.thread_time() - started)
        future.set_result(result)


def search_outcome(
    shard_id: int, started: cf.Future[ShardHits] | ShardError, timeout_s: float | None
) -> ShardHits | ShardError:
    """The result of a search started by start_search, once the caller has stopped waiting for it."""
    if isinstance(started, ShardError):
        return started
    if not started.done():
        started.cancel()
        limit = f" {timeout_s:.3f}s" if timeout_s is not None else ""
        return ShardError(
            f"shard {shard_id}: search exceeded its deadline{limit}", ErrorKind.DEADLINE_EXCEEDED
        )
    try:
        return started.result()
    except ShardError as exc:
        return exc
    except cf.CancelledError:
        return ShardError(f"shard {shard_id}: search cancelled", ErrorKind.UNAVAILABLE)
    except Exception as exc:
        return ShardError(f"shard {shard_id}: {type(exc).__name__}: {exc}", ErrorKind.INTERNAL)
