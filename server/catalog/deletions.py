"""The ids this frontend's catalogue deleted lately, in the order it applied them: what Catalog.WatchDeletes
streams to the edge tier, so that a cached answer holding a deleted item stops being served.

Fed by an ItemStore listener, so it sees every delete the catalogue applies, whichever path brought it (a
write through this frontend, or the shards' change feed for a write through any other). Bounded by the ids
it holds: past `max_ids` the oldest batches go and `covers_from_ms` moves past them, so a watcher asking for
older history, or one that fell that far behind, learns that it may have missed some.

Positions are this frontend's wall-clock milliseconds, not sequence numbers: a watcher can resume on any
other frontend (which applies the same deletes at about the same time) from the last position it saw, less
a margin for clock skew and feed lag. An id sent twice is harmless, a delete is idempotent.

It also records the users erased through this frontend (Catalog.DeleteUser(s), once the store erasure is
durable), so that the edges drop those users' cached answers. Unlike deletes these are this frontend's
own: no feed carries them to the others, so an edge follows every frontend's log for them
(server/edge/deletes.py ErasureWatch). Held in memory only, within the same bound, and never logged. Once
the log is closed (the frontend is stopping) an erasure is refused rather than recorded unstreamed, so
that a watcher's clean end of stream means it has heard of every erasure made through this process.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.catalog.item_store import ItemStore, Rows

Clock = Callable[[], float]

# About 100 bytes an id: ~10 MB at the bound, hours of deletes at any sane delete rate.
DEFAULT_MAX_IDS = 100_000
# Sent while nothing happens, so a watcher's position advances and a silent stream can be told dead.
HEARTBEAT_S = 5.0
# Ids per streamed message: a mass delete goes out in pieces well under gRPC's message limit.
MAX_IDS_PER_MESSAGE = 5_000


_Batch = tuple[int, int, tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class DeletedBatch:
    """One streamed message: ids (empty for a heartbeat), the position they bring the watcher to, and
    from when the log is complete (see the module doc)."""

    item_ids: tuple[str, ...]
    position_ms: int
    covers_from_ms: int
    erased_user_ids: tuple[str, ...] = ()
    started_ms: int = 0


class DeletionLog:
    def __init__(
        self,
        items: ItemStore | None = None,
        max_ids: int = DEFAULT_MAX_IDS,
        clock: Clock = time.time,
    ) -> None:
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self._max_ids = max_ids
        self._clock = clock
        # ItemStore listeners run on whatever thread applied the delete: everything below is guarded.
        self._lock = threading.Lock()
        # (sequence number, applied at ms, item ids, erased user ids), oldest first; the first `_head` are
        # dropped already (compacted now and then). Sequence numbers are consecutive, so a batch's index
        # is computed.
        self._batches: list[_Batch] = []
        self._head = 0
        self._held = 0
        self._next_seq = 0
        self._last_ms = self._now_ms()
        # Nothing before this frontend's log started is known to it.
        self._covers_from_ms = self.started_ms = self._last_ms
        self._wakers: set[Callable[[], None]] = set()
        self._closed = False
        self._items = items
        if items is not None:
            items.add_listener(self._on_catalogue_change)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def covers_from_ms(self) -> int:
        return self._covers_from_ms

    def __len__(self) -> int:
        """Ids held."""
        return self._held

    def _on_catalogue_change(self, rows: Rows, vectors: npt.NDArray[np.float32] | None) -> None:
        if vectors is None and self._items is not None:
            self.record(self._items.item_id(row) for row in rows.tolist())

    def record(self, item_ids: Iterable[str]) -> None:
        self._append(tuple(item_ids), ())

    def record_erasures(self, user_ids: Iterable[str]) -> bool:
        """Records users erased through this frontend; False (nothing recorded) once the log is closed:
        the caller must then not acknowledge the erasure as reaching the edges (see the module doc)."""
        return self._append((), tuple(user_ids))

    def _append(self, item_ids: tuple[str, ...], user_ids: tuple[str, ...]) -> bool:
        if not item_ids and not user_ids:
            return not self._closed
        with self._lock:
            if self._closed:
                return False
            # Never backwards, even when the wall clock steps back: positions order the log.
            at_ms = self._last_ms = max(self._now_ms(), self._last_ms)
            self._batches.append((self._next_seq, at_ms, item_ids, user_ids))
            self._next_seq += 1
            self._held += len(item_ids) + len(user_ids)
            while self._held > self._max_ids and len(self._batches) - self._head > 1:
                _, dropped_ms, dropped, dropped_users = self._batches[self._head]
                self._head += 1
                self._held -= len(dropped) + len(dropped_users)
                self._covers_from_ms = max(self._covers_from_ms, dropped_ms + 1)
            if self._head > 1024 and self._head * 2 > len(self._batches):
                del self._batches[: self._head]
                self._head = 0
            wakers = list(self._wakers)
        for wake in wakers:
            wake()
        return True

    def close(self) -> None:
        """Ends every follow(): the frontend is stopping, its watchers should resume elsewhere now rather
        than hold its drain for the whole grace period."""
        with self._lock:
            self._closed = True
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def _after(self, seq: int) -> tuple[list[_Batch], int, int]:
        """Batches after sequence number `seq`, the position a heartbeat may claim now (every later batch
        will be applied at or after it), and covers_from_ms."""
        with self._lock:
            start = self._head
            if len(self._batches) > start:
                start = max(start, seq + 1 - self._batches[0][0])
            pending = self._batches[start:]
            return pending, max(self._now_ms(), self._last_ms), self._covers_from_ms

    async def follow(self, since_ms: int, heartbeat_s: float = HEARTBEAT_S) -> AsyncGenerator[DeletedBatch]:
        """The deletes applied at or after `since_ms` (0: none before now), then new ones as they are
        applied; a heartbeat after `heartbeat_s` without any. The first message comes at once. A watcher
        that falls behind the log's bound jumps to its oldest batch (covers_from_ms says so)."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def waker() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(wake.set)

        with self._lock:
            self._wakers.add(waker)
            seq = self._next_seq - 1
            if since_ms > 0:
                # Positions never go backwards: the first batch applied at or after since_ms, by bisection.
                at = bisect.bisect_left(self._batches, since_ms, lo=self._head, key=lambda b: b[1])
                if at < len(self._batches):
                    seq = self._batches[at][0] - 1
        try:
            quiet = True  # the first message goes out even when there is nothing to replay
            while True:
                closed = self._closed  # read before the batches: nothing is recorded once it is set
                wake.clear()  # before reading: a batch recorded after the read sets it again
                pending, now_ms, covers_from_ms = self._after(seq)
                for batch_seq, at_ms, ids, users in pending:
                    for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
                        yield DeletedBatch(
                            ids[start : start + MAX_IDS_PER_MESSAGE],
                            at_ms,
                            covers_from_ms,
                            (),
                            self.started_ms,
                        )
                    for start in range(0, len(users), MAX_IDS_PER_MESSAGE):
                        yield DeletedBatch(
                            (),
                            at_ms,
                            covers_from_ms,
                            users[start : start + MAX_IDS_PER_MESSAGE],
                            self.started_ms,
                        )
                    seq = batch_seq
                if closed:
                    # Everything recorded was sent: the watcher's clean end of stream says so.
                    return
                if not pending and quiet:
                    yield DeletedBatch((), now_ms, covers_from_ms, (), self.started_ms)
                try:
                    await asyncio.wait_for(wake.wait(), heartbeat_s)
                    quiet = False
                except TimeoutError:
                    quiet = True
        finally:
            with self._lock:
                self._wakers.discard(waker)
