"""A generic append-only write-ahead log of opaque byte records, with group commit.

On disk: segment files `wal-<first LSN, 20 digits>.log` in one directory. Each record is framed as
`[u32 length][u32 crc32(payload)][payload]`, little-endian. LSNs are not stored: a record's LSN is its
segment's first LSN plus its position, so a segment name and a record count describe it fully.

Durability: `append` returns only after its records are written and fdatasync'ed. Concurrent appenders
share one write + sync (leader/follower group commit): the first appender to find no flush in progress
becomes the leader, waits up to `group_commit_window_s` for company (only when the previous flush had
company: a lone sequential writer never waits), then writes everything buffered; appenders that arrive
during a flush are carried by the next one. One sync therefore covers many appends under concurrency.

Recovery: a torn tail of the last segment (short header, short payload, CRC mismatch or zero fill at the
very end) is what a crash during an unacknowledged write leaves; it is truncated with a warning. Damage
anywhere else is corruption of acknowledged data and raises WALCorruptionError.

The log knows nothing about what the records mean: shard nodes and the frontend's embedded stores both
use it. It is thread-based; asyncio callers use `append_async` (or `asyncio.to_thread` for the rest).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards import metrics

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SEGMENT_RE = re.compile(r"^wal-(\d{20})\.log$")
MAX_RECORD_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 64 << 20


class WALError(Exception):
    """The log cannot be used (closed, or a write/sync failed: later appends would not be durable)."""


class WALCorruptionError(WALError):
    """Acknowledged data is damaged (bad record before the tail, a gap between segments)."""


@dataclass
class _Segment:
    first_lsn: int
    path: Path
    count: int  # durable records only
    size: int  # bytes of those records

    @property
    def end_lsn(self) -> int:
        """One past the last LSN in the segment."""
        return self.first_lsn + self.count


def _segment_path(directory: Path, first_lsn: int) -> Path:
    return directory / f"wal-{first_lsn:020d}.log"


def _frame(record: bytes) -> bytes:
    if not 0 < len(record) <= MAX_RECORD_BYTES:
        # Empty records are refused so that a zero-filled tail can never parse as valid data.
        raise ValueError(f"a WAL record must be 1..{MAX_RECORD_BYTES} bytes, got {len(record)}")
    return _HEADER.pack(len(record), zlib.crc32(record)) + record


def _parse(
    data: bytes | memoryview, limit: int | None = None
) -> tuple[list[tuple[int, int]], int, str | None]:
    """(payload offset, length) of the valid records from the start, where they end, and the problem
    that stopped parsing (None at a clean end). Stops after `limit` records when given."""
    records: list[tuple[int, int]] = []
    view = memoryview(data)
    off, n = 0, len(data)
    while off < n and (limit is None or len(records) < limit):
        if n - off < _HEADER.size:
            return records, off, "short header"
        length, crc = _HEADER.unpack_from(data, off)
        end = off + _HEADER.size + length
        if length == 0 or length > MAX_RECORD_BYTES:
            return records, off, f"bad length {length}"
        if end > n:
            return records, off, "short payload"
        if zlib.crc32(view[off + _HEADER.size : end]) != crc:
            return records, off, "crc mismatch"
        records.append((off + _HEADER.size, length))
        off = end
    return records, off, None


def _is_torn_tail(data: bytes, off: int) -> bool:
    """Whether the bad bytes starting at `off` can be a crash during the final write: a header cut short,
    zero fill to the end, or one damaged record that reaches the end of the file (or is followed only by
    zero fill). A nonsensical length, or intact records after the damage, cannot come from a torn append."""
    n = len(data)
    if n - off < _HEADER.size or not data[off:].strip(b"\0"):
        return True
    length = _HEADER.unpack_from(data, off)[0]
    if length == 0 or length > MAX_RECORD_BYTES:
        return False
    end = off + _HEADER.size + length
    if end < n and data[end:].strip(b"\0"):
        return False
    # The damaged record claims to reach the end of the file. A crash leaves exactly that, but so does a
    # corrupted length field in the middle of the log: look for intact records after it.
    return not _intact_records_after(data, off + 1)


def _intact_records_after(data: bytes, start: int) -> bool:
    """Whether some offset >= start begins a chain of valid records running to the end of the file (or to
    zero fill). A torn payload would need a correct CRC-32 by chance to pass for one."""
    n = len(data)
    window = 1 << 20  # candidates per numpy pass: bounds memory on a large segment
    for align in range(4):
        first = start + align
        count = (n - first) // 4 - 1  # room for a whole header after each candidate
        for lo in range(0, max(count, 0), window):
            hi = min(count, lo + window)
            lengths = np.frombuffer(data, dtype="<u4", count=hi - lo, offset=first + 4 * lo).astype(np.int64)
            positions = first + 4 * np.arange(lo, hi, dtype=np.int64)
            plausible = (lengths > 0) & (positions + _HEADER.size + lengths <= n)
            for pos in positions[plausible].tolist():
                records, end, problem = _parse(memoryview(data)[pos:])
                if records and (problem is None or not data[pos + end :].strip(b"\0")):
                    return True
    return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sync = getattr(os, "fdatasync", os.fsync)


class WriteAheadLog:
    """Thread-safe. `first_lsn` only matters for an empty directory (e.g. after every segment below a
    snapshot was dropped, the log must continue numbering after the snapshot)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        group_commit_window_s: float = 0.002,
        *,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        first_lsn: int = 1,
    ) -> None:
        if first_lsn < 1:
            raise ValueError("first_lsn must be >= 1")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._window = max(0.0, group_commit_window_s)
        self._max_segment_bytes = max_segment_bytes
        self._cond = threading.Condition(threading.Lock())
        self._segments = self._recover(first_lsn)
        active = self._segments[-1]
        self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._next_lsn = active.end_lsn
        self._durable_lsn = active.end_lsn - 1
        self._buffer: list[bytes] = []
        self._flushing = False
        self._last_group_size = 0  # appends carried by the previous flush
        self._failure: BaseException | None = None
        self._closed = False
        self.fsync_count = 0
        """Number of data syncs issued; group commit keeps it far below the number of appends."""

    # ------------------------------------------------------------------ recovery
    def _recover(self, first_lsn: int) -> list[_Segment]:
        found = sorted(
            (int(m.group(1)), self._dir / name)
            for name in os.listdir(self._dir)
            if (m := _SEGMENT_RE.match(name))
        )
        if not found:
            path = _segment_path(self._dir, first_lsn)
            path.touch()
            _fsync_dir(self._dir)
            return [_Segment(first_lsn, path, 0, 0)]
        segments: list[_Segment] = []
        for i, (seg_first, path) in enumerate(found):
            data = path.read_bytes()
            records, end, problem = _parse(data)
            if problem is not None:
                if i == len(found) - 1 and _is_torn_tail(data, end):
                    log.warning(
                        "WAL %s: dropping a torn record at offset %d (%s, %d bytes), never acknowledged",
                        path,
                        end,
                        problem,
                        len(data) - end,
                    )
                    with open(path, "r+b") as f:
                        f.truncate(end)
                        f.flush()
                        os.fsync(f.fileno())
                else:
                    raise WALCorruptionError(f"WAL {path}: {problem} at offset {end} (not at the tail)")
            if segments and segments[-1].end_lsn != seg_first:
                raise WALCorruptionError(
                    f"WAL {path}: starts at LSN {seg_first} but the previous segment ends before "
                    f"{segments[-1].end_lsn}"
                )
            segments.append(_Segment(seg_first, path, len(records), end))
        return segments

    # ------------------------------------------------------------------ writing
    def append(self, records: Sequence[bytes]) -> int:
        """Append records; returns the LSN of the last one once all are durable (LSNs are consecutive)."""
        if not records:
            raise ValueError("append needs at least one record")
        blob = b"".join(_frame(bytes(r)) for r in records)
        with self._cond:
            self._check_usable()
            self._buffer.append(blob)
            self._next_lsn += len(records)
            last = self._next_lsn - 1
            while self._durable_lsn < last:
                if self._failure is not None:
                    raise WALError("WAL write failed; the log is unusable") from self._failure
                if self._closed:
                    raise WALError("WAL closed before these records were written")
                if self._flushing:
                    self._cond.wait()
                else:
                    self._flush_as_leader(wait_for_company=True, rotate=False)
            return last

    async def append_async(self, records: Sequence[bytes]) -> int:
        """For asyncio callers: the blocking sync happens on a worker thread."""
        return await asyncio.to_thread(self.append, records)

    def rotate(self) -> int:
        """Close the current segment (after flushing what is buffered) and start a new one. Returns the
        boundary: every LSN below it lives in older segments. A no-op when the current segment is empty."""
        with self._cond:
            self._check_usable()
            while self._flushing:
                self._cond.wait()
            self._check_usable()
            self._flush_as_leader(wait_for_company=False, rotate=True)
            return self._segments[-1].first_lsn

    def _flush_as_leader(self, *, wait_for_company: bool, rotate: bool) -> None:
        """Called with the lock held and no flush in progress; returns with the lock held."""
        self._flushing = True
        try:
            if wait_for_company and self._window > 0 and self._last_group_size > 1:
                # Releases the lock: appenders arriving now join this flush instead of starting another.
                # Only worth it when the previous flush had company; a lone writer never waits.
                self._cond.wait(self._window)
            self._last_group_size = len(self._buffer)
            data = b"".join(self._buffer)
            self._buffer.clear()
            upto = self._next_lsn - 1
            count = upto - self._durable_lsn
            active = self._segments[-1]
            new_before: _Segment | None = None
            new_after: _Segment | None = None
            self._cond.release()
            try:
                if count and active.count and active.size + len(data) > self._max_segment_bytes:
                    new_before = self._create_segment(self._durable_lsn + 1)
                if count:
                    self._write_all(new_before.path if new_before else None, data)
                    metrics.WAL_GROUP.observe(self._last_group_size)
                if rotate and (count or active.count):
                    new_after = self._create_segment(upto + 1)
            finally:
                self._cond.acquire()
            if new_before is not None:
                self._segments.append(new_before)
            if count:
                seg = self._segments[-1]
                seg.count += count
                seg.size += len(data)
            if new_after is not None:
                self._segments.append(new_after)
            if new_before is not None or new_after is not None:
                self._reopen_active()
            self._durable_lsn = upto
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._flushing = False
            self._cond.notify_all()

    def _create_segment(self, first_lsn: int) -> _Segment:
        path = _segment_path(self._dir, first_lsn)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.close(fd)
        _fsync_dir(self._dir)
        return _Segment(first_lsn, path, 0, 0)

    def _write_all(self, new_path: Path | None, data: bytes) -> None:
        fd = self._fd
        if new_path is not None:
            # Rotation before writing: records never span segments.
            fd = os.open(new_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            began = time.monotonic()
            while view:
                written = os.write(fd, view)
                view = view[written:]
            _sync(fd)
            metrics.WAL_FSYNC.observe(time.monotonic() - began)
            self.fsync_count += 1
        finally:
            if new_path is not None:
                os.close(fd)

    def _reopen_active(self) -> None:
        old = self._fd
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        os.close(old)

    def _check_usable(self) -> None:
        if self._closed:
            raise WALError("WAL is closed")
        if self._failure is not None:
            raise WALError("WAL write failed earlier; the log is unusable") from self._failure

    # ------------------------------------------------------------------ reading and trimming
    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, bytes]]:
        """Durable records with LSN > after_lsn, in order. Records appended while iterating may or may not
        be included; segments must not be dropped while a replay is in progress."""
        with self._cond:
            segments = [_Segment(s.first_lsn, s.path, s.count, s.size) for s in self._segments]
        for seg in segments:
            if seg.end_lsn <= after_lsn + 1 or seg.count == 0:
                continue
            with open(seg.path, "rb") as f:
                data = f.read(seg.size)
            records, _, problem = _parse(data, limit=seg.count)
            if len(records) != seg.count:
                raise WALCorruptionError(
                    f"WAL {seg.path}: {problem} after {len(records)} records during replay"
                )
            for i, (off, length) in enumerate(records):
                lsn = seg.first_lsn + i
                if lsn > after_lsn:
                    yield lsn, data[off : off + length]

    def drop_before(self, lsn: int) -> int:
        """Delete whole segments whose records are all below `lsn` (never the active one); returns how
        many were deleted."""
        with self._cond:
            doomed = [s for s in self._segments[:-1] if s.end_lsn <= lsn]
            for seg in doomed:
                seg.path.unlink(missing_ok=True)
            self._segments = [s for s in self._segments if s not in doomed]
        if doomed:
            _fsync_dir(self._dir)
        return len(doomed)

    @property
    def first_lsn(self) -> int:
        """The oldest LSN still on disk (or the next LSN when the log is empty)."""
        with self._cond:
            return self._segments[0].first_lsn

    @property
    def next_lsn(self) -> int:
        with self._cond:
            return self._next_lsn

    @property
    def durable_lsn(self) -> int:
        with self._cond:
            return self._durable_lsn

    @property
    def size_bytes(self) -> int:
        with self._cond:
            return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        with self._cond:
            return len(self._segments)

    def close(self) -> None:
        """Waits for an in-flight flush and writes whatever is still buffered."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            if self._closed:
                return
            if self._buffer and self._failure is None:
                self._flush_as_leader(wait_for_company=False, rotate=False)
            self._closed = True
            os.close(self._fd)
            self._cond.notify_all()

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
