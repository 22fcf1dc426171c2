"""A small writer-preferring readers-writer lock.

hnswlib's knn_query may run concurrently with other queries but not with add_items, mark_deleted or
resize_index. Writer preference matters because searches arrive continuously: with a reader-preferring
lock, a busy shard would never let ingest in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    """Not reentrant: a thread holding the read side must not acquire it again (a waiting writer would
    block the second acquisition forever)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            if self._readers <= 0:
                raise RuntimeError("release_read without a reader")
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            if not self._writer:
                raise RuntimeError("release_write without the writer")
            self._writer = False
            self._cond.notify_all()

    def downgrade(self) -> None:
        """Writer becomes a reader without letting another writer in between (used to change a setting
        and then use it alongside other readers)."""
        with self._cond:
            if not self._writer:
                raise RuntimeError("downgrade without the writer")
            self._writer = False
            self._readers += 1
            self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()
