"""Tests of server/experiments/fatigue.py: items shown to a user at least N times within the window become
that user's fatigue labels, read from the real in-memory profile store plus the answers not yet written;
a failed read leaves fatigue out instead of failing the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from server import _core
from server.backends.memory_profiles import InMemoryProfileStore
from server.catalog.item_store import ItemStore
from server.config import ExposuresConfig
from server.domain import Exposure
from server.experiments.assignment import OUTSIDE
from server.experiments.exposures import ExposureLog
from server.experiments.fatigue import Fatigue

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
HOUR_MS = 3_600_000
CONFIG = ExposuresConfig(
    write_back=True, fatigue_after=3, fatigue_window_s=24 * 3600.0, flush_interval_ms=60_000.0
)


def labels_of(*item_ids: str) -> list[int]:
    return sorted(int(h) for h in _core.stable_hash64(list(item_ids)))


class FailingStore:
    async def read_exposures(
        self, user_ids: Sequence[str], since_ms: int, limit: int, timeout_s: float
    ) -> list[list[Exposure]]:
        raise TimeoutError("profile store too slow")


async def setup(
    stored: Sequence[tuple[str, int, tuple[str, ...]]],
) -> tuple[Fatigue, ExposureLog, InMemoryProfileStore]:
    store = InMemoryProfileStore(None, clock=lambda: NOW_S)
    await store.record_exposures(
        [Exposure(user, at, items, "", 1.0, 0.0) for user, at, items in stored], 200, 7 * 86400.0
    )
    log = ExposureLog(store, ItemStore(2, capacity=4), CONFIG, wall_clock_ms=lambda: NOW_MS)
    return Fatigue(log, store, CONFIG, wall_clock_ms=lambda: NOW_MS), log, store


async def test_items_shown_n_times_in_the_window_become_labels() -> None:
    fatigue, log, _ = await setup(
        [
            ("u1", NOW_MS - 3 * HOUR_MS, ("a", "b", "c")),
            ("u1", NOW_MS - 2 * HOUR_MS, ("a", "b")),
            ("u1", NOW_MS - 1 * HOUR_MS, ("a", "d")),
            ("u2", NOW_MS - 1 * HOUR_MS, ("a",)),
        ]
    )
    u1, u2, u3 = await fatigue.labels(["u1", "u2", "u3"], 1.0)
    assert u1.dtype == np.uint64
    assert u1.tolist() == labels_of("a")  # a 3 times; b twice and c, d once: not yet
    assert u2.tolist() == [] and u3.tolist() == []
    await log.close()


async def test_old_exposures_outside_the_window_do_not_count() -> None:
    fatigue, log, _ = await setup(
        [
            ("u1", NOW_MS - 30 * HOUR_MS, ("a", "b")),  # outside the 24 h window
            ("u1", NOW_MS - 25 * HOUR_MS, ("a", "b")),
            ("u1", NOW_MS - 2 * HOUR_MS, ("a", "b")),
            ("u1", NOW_MS - 1 * HOUR_MS, ("a",)),
        ]
    )
    (u1,) = await fatigue.labels(["u1"], 1.0)
    assert u1.tolist() == []  # a: 2 in the window, b: 1
    await log.close()


async def test_answers_not_yet_written_count_too() -> None:
    fatigue, log, _ = await setup(
        [("u1", NOW_MS - 2 * HOUR_MS, ("a", "b")), ("u1", NOW_MS - HOUR_MS, ("a", "b"))]
    )
    (before,) = await fatigue.labels(["u1"], 1.0)
    assert before.tolist() == []
    log.log("u1", ["b", "c"], OUTSIDE, 0.001)  # queued, not written: the third showing of b
    (after,) = await fatigue.labels(["u1"], 1.0)
    assert after.tolist() == labels_of("b")
    await log.close()


async def test_labels_align_with_repeated_users() -> None:
    fatigue, log, _ = await setup([("u1", NOW_MS - n * HOUR_MS, ("a", "b")) for n in (1, 2, 3)])
    first, other, again = await fatigue.labels(["u1", "u2", "u1"], 1.0)
    assert first.tolist() == again.tolist() == labels_of("a", "b")
    assert other.tolist() == []
    await log.close()


async def test_a_failing_store_read_gives_no_labels_and_no_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore()
    log = ExposureLog(store, ItemStore(2, capacity=4), CONFIG)  # type: ignore[arg-type]
    fatigue = Fatigue(log, store, CONFIG)  # type: ignore[arg-type]
    out = await fatigue.labels(["u1", "u2"], 0.01)
    assert [x.tolist() for x in out] == [[], []]
    assert any("fatigue" in r.getMessage() for r in caplog.records)


class AppliedBeforeAckStore:
    """A remote store as the frontend sees it: a write is applied (readable by others) before its
    acknowledgement comes back."""

    def __init__(self) -> None:
        self.held: list[Exposure] = []
        self.applied = asyncio.Event()
        self.ack = asyncio.Event()

    async def record_exposures(self, exposures: Sequence[Exposure], keep_per_user: int, ttl_s: float) -> None:
        self.held.extend(exposures)
        self.applied.set()
        await self.ack.wait()

    async def read_exposures(
        self, user_ids: Sequence[str], since_ms: int, limit: int, timeout_s: float
    ) -> list[list[Exposure]]:
        return [
            sorted(
                (e for e in self.held if e.user_id == u and e.served_at_ms >= since_ms),
                key=lambda e: -e.served_at_ms,
            )[:limit]
            for u in user_ids
        ]


async def test_an_answer_being_written_is_not_counted_twice() -> None:
    """While a write is in flight its answers are both pending and (on a remote store) already
    readable: one showing must not count as two."""
    store = AppliedBeforeAckStore()
    config = ExposuresConfig(write_back=True, fatigue_after=2, flush_interval_ms=60_000.0)
    log = ExposureLog(store, ItemStore(2, capacity=4), config, wall_clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    fatigue = Fatigue(log, store, config, wall_clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    log.log("u1", ["a"], OUTSIDE, 0.001)
    flushing = asyncio.create_task(log.flush())
    try:
        await store.applied.wait()
        assert "u1" in log.pending(["u1"]) and len(store.held) == 1  # both views hold the one answer
        (u1,) = await fatigue.labels(["u1"], 1.0)
        assert u1.tolist() == []  # shown once, not twice
    finally:
        store.ack.set()
        await flushing
        await log.close()
