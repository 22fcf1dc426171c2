"""A durable write path for an in-memory store: log, fsync, apply; and snapshots that bound replay.

Each write is ONE log record; it is acknowledged only once fsynced and applied to memory only after that,
so a reader never sees a write a crash could still lose, and memory always equals "snapshot + log
replayed in LSN order". A single writer task drains pending writes into one log append (one fsync for many
callers) and applies them in LSN order. `compact()` writes the store's snapshot at a known LSN (the store
decides the format; it must write to a temp name and rename) and drops the log below it; it runs in the
background every `compact_after_records` records and from `close()`, so opening stays fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from server.errors import BackendError
from shards.wal import WriteAheadLog

log = logging.getLogger(__name__)

WAL_DIR = "wal"

# Captures the store's state now (cheaply, on the event loop) and returns the blocking function that
# writes that captured state to `path` as the snapshot covering `lsn`.
SnapshotCapture = Callable[[], Callable[[Path, int], None]]


class Journal:
    def __init__(
        self,
        backend: str,
        data_dir: Path | None,
        snapshot_file: str,
        *,
        apply_record: Callable[[bytes, int], None],
        load_snapshot: Callable[[Path], int],
        capture_snapshot: SnapshotCapture,
        compact_after_records: int = 10_000,
        group_commit_window_s: float = 0.002,
    ) -> None:
        self.backend = backend
        self.compact_after_records = compact_after_records
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._snapshot_file = snapshot_file
        self._apply_record = apply_record
        self._load_snapshot = load_snapshot
        self._capture_snapshot = capture_snapshot
        self._wal: WriteAheadLog | None = None
        self._pending: list[tuple[bytes, Callable[[], None], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._compaction: asyncio.Task[None] | None = None
        self._compact_lock = asyncio.Lock()
        self.applied_lsn = 0
        self.snapshot_lsn = 0
        self.closed = False
        if self._data_dir is not None:
            self._open(self._data_dir, group_commit_window_s)

    @property
    def durable(self) -> bool:
        return self._wal is not None

    def _open(self, data_dir: Path, group_commit_window_s: float) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        snapshot = data_dir / self._snapshot_file
        if snapshot.exists():
            self.snapshot_lsn = self._load_snapshot(snapshot)
        self.applied_lsn = self.snapshot_lsn
        wal = WriteAheadLog(data_dir / WAL_DIR, group_commit_window_s, first_lsn=self.snapshot_lsn + 1)
        if wal.first_lsn > self.snapshot_lsn + 1:
            raise BackendError(
                self.backend,
                f"{data_dir}: the log starts at LSN {wal.first_lsn} but the snapshot covers only up to "
                f"{self.snapshot_lsn}; records in between are missing",
                transient=False,
            )
        for lsn, record in wal.replay(after_lsn=self.snapshot_lsn):
            self._apply_record(record, lsn)
            self.applied_lsn = lsn
        self._wal = wal

    async def write(self, record: bytes, apply: Callable[[], None]) -> None:
        """Returns once `record` is fsynced and `apply` has run (at once, when not durable)."""
        if self.closed:
            raise BackendError(self.backend, "the store is closed", transient=False)
        if self._wal is None:
            apply()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, apply, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        """The single writer: one log append for everything pending, then apply in LSN order."""
        assert self._wal is not None
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                last_lsn = await asyncio.to_thread(self._wal.append, [record for record, _, _ in batch])
            except Exception as exc:
                error = BackendError(self.backend, f"write-ahead log append failed: {exc}", transient=False)
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, apply, done in batch:
                try:
                    apply()
                except Exception as exc:  # a bug, not bad input (validated before logging): stay alive
                    log.exception("%s: applying a logged write failed", self.backend)
                    if not done.done():
                        done.set_exception(exc)
                    continue
                if not done.done():
                    done.set_result(None)
            self.applied_lsn = last_lsn
            if (
                self.applied_lsn - self.snapshot_lsn >= self.compact_after_records
                and (self._compaction is None or self._compaction.done())
                and not self.closed
            ):
                self._compaction = asyncio.create_task(self._background_compact())

    async def compact(self) -> None:
        """Write a snapshot of the current state and drop the log it makes redundant."""
        if self._wal is None or self._data_dir is None:
            return
        async with self._compact_lock:
            lsn = self.applied_lsn
            if lsn == self.snapshot_lsn:
                return
            write_snapshot = self._capture_snapshot()
            await asyncio.to_thread(write_snapshot, self._data_dir / self._snapshot_file, lsn)
            self.snapshot_lsn = lsn
            await asyncio.to_thread(self._wal.rotate)
            await asyncio.to_thread(self._wal.drop_before, lsn + 1)

    async def _background_compact(self) -> None:
        try:
            await self.compact()
        except Exception:
            # The log still holds everything, so a failed snapshot costs only replay time at the next start.
            log.exception("%s snapshot failed; will retry after more writes", self.backend)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            await self._writer
        if self._compaction is not None:
            await self._compaction
        if self._wal is not None:
            try:
                await self.compact()
            finally:
                await asyncio.to_thread(self._wal.close)
