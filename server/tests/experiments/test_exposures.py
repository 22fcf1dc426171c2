"""Tests of server/experiments/exposures.py: the request path only queues, the writer sends batches to the
profile store (the real in-memory one, and a recording fake where the calls themselves matter), a full
queue drops and counts, and each answer's diversity is the mean cosine distance of its items."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from prometheus_client import REGISTRY

from server import _core
from server.backends.base import ProfileStore
from server.backends.memory_profiles import InMemoryProfileStore
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.config import ExposuresConfig
from server.domain import Exposure
from server.experiments.assignment import OUTSIDE, Arm
from server.experiments.exposures import ExposureLog, with_diversity

NOW_MS = 1_700_000_000_000
ARM = Arm((("colour", "blue"),), {"ef_search": 40})
# Long enough that the background writer never runs during a test unless the test waits for it.
QUIET = ExposuresConfig(flush_interval_ms=60_000.0)


class RecordingStore:
    """The two exposure-log calls of a ProfileStore, recorded; optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[list[Exposure], int, float]] = []
        self.started = asyncio.Event()
        self.delay_s = delay_s
        self.fail = fail

    async def record_exposures(self, exposures: Sequence[Exposure], keep_per_user: int, ttl_s: float) -> None:
        self.started.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("store down")
        self.calls.append((list(exposures), keep_per_user, ttl_s))


def items() -> ItemStore:
    """a and b point the same way, c is orthogonal to both, d is the opposite of a."""
    ids = ["a", "b", "c", "d"]
    store = ItemStore(2, capacity=4)
    vectors = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], np.float32)
    store.upsert(ids, _core.stable_hash64(ids), vectors, [ItemMetadata({}, 1.0, 0) for _ in ids])
    return store


def exposure_log(store: object, config: ExposuresConfig = QUIET) -> ExposureLog:
    return ExposureLog(store, items(), config, wall_clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]


def logged(outcome: str) -> float:
    return REGISTRY.get_sample_value("recd_exposures_logged_total", {"outcome": outcome}) or 0.0


def variant_sample(name: str, experiment: str = "colour", variant: str = "blue") -> float:
    return REGISTRY.get_sample_value(name, {"experiment": experiment, "variant": variant}) or 0.0


def exposure(user: str, items_: Sequence[str], at: int = NOW_MS, arm: str = "x=y") -> Exposure:
    return Exposure(user, at, tuple(items_), arm, 1.0, 0.0)


async def test_log_queues_without_writing_and_flush_writes_one_batch() -> None:
    store = RecordingStore()
    log = exposure_log(store)
    written = logged("written")
    log.log("u1", ["a", "b"], ARM, 0.012)
    log.log("u2", ["c"], ARM, 0.004)
    log.log("u1", ["d"], OUTSIDE, 0.001)
    assert store.calls == []  # log() is synchronous: nothing reached the store
    await log.flush()
    assert len(store.calls) == 1
    batch, keep, ttl = store.calls[0]
    assert (keep, ttl) == (QUIET.keep_per_user, QUIET.ttl_s)
    assert [(e.user_id, e.item_ids, e.arm) for e in batch] == [
        ("u1", ("a", "b"), "colour=blue"),
        ("u2", ("c",), "colour=blue"),
        ("u1", ("d",), ""),
    ]
    assert all(e.served_at_ms == NOW_MS for e in batch)
    assert batch[0].latency_ms == pytest.approx(12.0) and batch[1].latency_ms == pytest.approx(4.0)
    assert logged("written") == written + 3
    assert log.pending(["u1", "u2"]) == {}
    await log.flush()  # nothing queued: no empty write
    assert len(store.calls) == 1
    await log.close()


async def test_written_answers_reach_the_real_store() -> None:
    store = InMemoryProfileStore(None, clock=lambda: NOW_MS / 1000)
    log = exposure_log(store)
    log.log("u1", ["a", "c"], ARM, 0.01)
    log.log("u1", ["a", "b"], ARM, 0.02)
    await log.flush()
    (held,) = await store.read_exposures(["u1"], NOW_MS - 1000, 10, 1.0)
    assert sorted((e.item_ids, e.arm, e.diversity) for e in held) == [
        (("a", "b"), "colour=blue", pytest.approx(0.0, abs=1e-3)),
        (("a", "c"), "colour=blue", pytest.approx(1.0, abs=1e-3)),
    ]
    await log.close()


async def test_the_background_writer_flushes_on_its_own() -> None:
    store = RecordingStore()
    log = exposure_log(store, ExposuresConfig(flush_interval_ms=1.0))
    log.log("u1", ["a"], ARM, 0.001)
    log.log("u2", ["b"], ARM, 0.001)
    for _ in range(200):
        if store.calls:
            break
        await asyncio.sleep(0.005)
    assert [[e.user_id for e in batch] for batch, _, _ in store.calls] == [["u1", "u2"]]
    await log.close()


async def test_per_variant_counters_count_at_serve_time() -> None:
    log = exposure_log(RecordingStore())
    answers = variant_sample("recd_experiment_answers_total")
    impressions = variant_sample("recd_experiment_impressions_total")
    latencies = variant_sample("recd_experiment_latency_seconds_count")
    log.log("u1", ["a", "b", "c"], ARM, 0.01)
    log.log("u2", ["a"], ARM, 0.02)
    assert variant_sample("recd_experiment_answers_total") == answers + 2
    assert variant_sample("recd_experiment_impressions_total") == impressions + 4
    assert variant_sample("recd_experiment_latency_seconds_count") == latencies + 2
    await log.close()


async def test_a_full_queue_drops_and_counts() -> None:
    store = RecordingStore()
    log = exposure_log(store, ExposuresConfig(flush_interval_ms=60_000.0, queue_max=2))
    dropped = logged("dropped")
    for n in range(5):
        log.log(f"u{n}", ["a"], ARM, 0.001)
    assert logged("dropped") == dropped + 3
    assert sorted(log.pending([f"u{n}" for n in range(5)])) == ["u0", "u1"]
    await log.flush()
    assert [e.user_id for e in store.calls[0][0]] == ["u0", "u1"]
    log.log("u9", ["a"], ARM, 0.001)  # room again once written
    assert "u9" in log.pending(["u9"])
    await log.close()


async def test_pending_returns_unwritten_answers_newest_first() -> None:
    clock = iter(range(NOW_MS, NOW_MS + 100))
    store = RecordingStore(delay_s=0.05)
    log = ExposureLog(store, items(), QUIET, wall_clock_ms=lambda: next(clock))  # type: ignore[arg-type]
    log.log("u1", ["a"], ARM, 0.001)
    log.log("u2", ["b"], ARM, 0.001)
    log.log("u1", ["c"], ARM, 0.001)
    found = log.pending(["u1", "u3"])
    assert list(found) == ["u1"]
    assert [e.item_ids for e in found["u1"]] == [("c",), ("a",)]
    assert [e.served_at_ms for e in found["u1"]] == [NOW_MS + 2, NOW_MS]
    # While a batch is being written (the store has not acknowledged it) it is still pending, and
    # answers queued meanwhile come first.
    flushing = asyncio.create_task(log.flush())
    await store.started.wait()
    log.log("u1", ["d"], ARM, 0.001)
    assert [e.item_ids for e in log.pending(["u1"])["u1"]] == [("d",), ("c",), ("a",)]
    await flushing  # flush() goes on until the queue is empty: "d" is written by it too
    assert log.pending(["u1"]) == {}
    assert [[e.item_ids for e in batch] for batch, _, _ in store.calls] == [
        [("a",), ("b",), ("c",)],
        [("d",)],
    ]
    await log.close()


async def test_a_failed_write_is_counted_and_raises_nothing() -> None:
    store = RecordingStore(fail=True)
    log = exposure_log(store)
    failed = logged("failed")
    log.log("u1", ["a"], ARM, 0.001)
    log.log("u2", ["a"], ARM, 0.001)
    await log.flush()
    assert logged("failed") == failed + 2
    assert log.pending(["u1", "u2"]) == {}
    await log.close()


async def test_close_writes_what_is_queued_and_then_logs_nothing() -> None:
    store = RecordingStore()
    log = exposure_log(store)
    log.log("u1", ["a"], ARM, 0.001)
    log.log("u2", ["b"], ARM, 0.001)
    await log.close()
    assert [[e.user_id for e in batch] for batch, _, _ in store.calls] == [["u1", "u2"]]
    answers = variant_sample("recd_experiment_answers_total")
    log.log("u3", ["c"], ARM, 0.001)  # after close: counted, not queued
    assert variant_sample("recd_experiment_answers_total") == answers + 1
    assert log.pending(["u3"]) == {}
    await log.close()  # twice is harmless
    assert len(store.calls) == 1


async def test_close_rewrites_a_batch_whose_write_it_interrupted() -> None:
    """close() cancels the writer; a batch it was writing (taken from the queue, not acknowledged)
    must still be written, as the `if self._writing` branch of close() intends."""
    store = RecordingStore(delay_s=0.2)
    log = exposure_log(store, ExposuresConfig(flush_interval_ms=0.0))
    log.log("u1", ["a"], ARM, 0.001)
    await asyncio.wait_for(store.started.wait(), 5)  # the background writer is inside the store call
    assert "u1" in log.pending(["u1"])
    await log.close()
    assert [[e.user_id for e in batch] for batch, _, _ in store.calls] == [["u1"]]


async def test_forget_drops_queued_answers_and_waits_for_a_write_that_holds_the_user() -> None:
    """Before an erasure: nothing of the user may reach the store after forget() returns."""
    store = RecordingStore(delay_s=0.2)
    log = exposure_log(store, ExposuresConfig(flush_interval_ms=0.0))
    log.log("u1", ["a"], ARM, 0.001)
    await asyncio.wait_for(store.started.wait(), 5)  # u1's answer is being written
    log.log("u1", ["b"], ARM, 0.001)
    log.log("u2", ["c"], ARM, 0.001)
    await log.forget(["u1"])
    assert [[e.user_id for e in batch] for batch, _, _ in store.calls] == [["u1"]]  # the write finished
    assert "u1" not in log.pending(["u1"])
    await log.close()
    assert [e.user_id for batch, _, _ in store.calls for e in batch] == ["u1", "u2"]


def test_diversity_of_identical_orthogonal_and_opposite_items() -> None:
    batch = [
        exposure("u", ["a", "b"]),  # identical directions
        exposure("u", ["a", "c"]),  # orthogonal
        exposure("u", ["a", "d"]),  # opposite: cosine distance 2
        exposure("u", ["a", "b", "c"]),  # pairs 0, 1, 1
        exposure("u", ["a"]),  # fewer than two items
        exposure("u", []),
        exposure("u", ["a", "gone"]),  # an item no longer in the catalogue is left out
        exposure("u", ["gone", "c", "b", "gone2"]),
    ]
    out = with_diversity(batch, items())
    assert [e.diversity for e in out] == pytest.approx([0.0, 1.0, 2.0, 2 / 3, 0.0, 0.0, 0.0, 1.0], abs=2e-3)
    # Everything else is kept as it was, in order.
    assert [(e.user_id, e.item_ids, e.arm, e.served_at_ms) for e in out] == [
        (e.user_id, e.item_ids, e.arm, e.served_at_ms) for e in batch
    ]


def test_diversity_ignores_vector_lengths() -> None:
    ids = ["long", "short", "zero"]
    store = ItemStore(2, capacity=4)
    vectors = np.array([[3, 0], [0, 0.5], [0, 0]], np.float32)
    store.upsert(ids, _core.stable_hash64(ids), vectors, [ItemMetadata({}, 1.0, 0) for _ in ids])
    (out,) = with_diversity([exposure("u", ["long", "short"])], store)
    assert out.diversity == pytest.approx(1.0, abs=2e-3)
    (out,) = with_diversity([exposure("u", ["long", "zero"])], store)  # a zero vector has no direction
    assert out.diversity == 0.0


async def test_diversity_is_observed_per_variant_at_write_time() -> None:
    log = exposure_log(RecordingStore())
    count = variant_sample("recd_experiment_list_diversity_count")
    total = variant_sample("recd_experiment_list_diversity_sum")
    log.log("u1", ["a", "c"], ARM, 0.001)
    assert variant_sample("recd_experiment_list_diversity_count") == count
    await log.flush()
    assert variant_sample("recd_experiment_list_diversity_count") == count + 1
    assert variant_sample("recd_experiment_list_diversity_sum") == pytest.approx(total + 1.0, abs=2e-3)
    await log.close()


def test_recording_store_matches_the_protocol_method() -> None:
    """The fake keeps the real signature, so it cannot drift from what ExposureLog calls."""
    import inspect

    real = inspect.signature(ProfileStore.record_exposures)
    fake = inspect.signature(RecordingStore.record_exposures)
    assert list(real.parameters) == list(fake.parameters)
