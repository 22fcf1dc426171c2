from __future__ import annotations

import threading
import time

from shards.rwlock import RWLock


def test_readers_share() -> None:
    lock = RWLock()
    inside = threading.Barrier(3, timeout=5)

    def reader() -> None:
        with lock.read():
            inside.wait()  # all three are inside at once, or this times out

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_waiting_writer_blocks_new_readers() -> None:
    lock = RWLock()
    events: list[str] = []
    lock.acquire_read()

    def writer() -> None:
        with lock.write():
            events.append("writer")

    def late_reader() -> None:
        with lock.read():
            events.append("late reader")

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)  # the writer is now waiting for the first reader
    r = threading.Thread(target=late_reader)
    r.start()
    time.sleep(0.05)
    assert events == [], "neither may enter while the first reader holds the lock"
    lock.release_read()
    w.join(5)
    r.join(5)
    assert events == ["writer", "late reader"], "writer preference: ingest can't be starved by searches"


def test_downgrade_keeps_writers_out_but_lets_readers_in() -> None:
    lock = RWLock()
    lock.acquire_write()
    lock.downgrade()
    got_read = threading.Event()
    got_write = threading.Event()

    def reader() -> None:
        with lock.read():
            got_read.set()

    def writer() -> None:
        with lock.write():
            got_write.set()

    threading.Thread(target=reader).start()
    assert got_read.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    assert not got_write.wait(0.05)
    lock.release_read()
    assert got_write.wait(5)
    w.join()
