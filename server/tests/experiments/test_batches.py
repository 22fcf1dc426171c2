"""Tests of server/experiments/batches.py: work queued without waiting, processed in batches by a task
of its own, visible until processed, bounded, and drained on flush and close."""

from __future__ import annotations

import asyncio

from server.experiments.batches import BatchQueue


class Recorder:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.delay_s = delay_s

    async def process(self, batch: list[int]) -> None:
        self.started.set()
        await asyncio.sleep(self.delay_s)
        self.batches.append(batch)


def queue(
    recorder: Recorder, interval_s: float = 60.0, queue_max: int = 100
) -> tuple[BatchQueue[int], list[int]]:
    dropped: list[int] = []
    return BatchQueue(recorder.process, interval_s, queue_max, dropped.append, "test"), dropped


async def test_items_gather_into_one_batch_per_interval() -> None:
    recorder = Recorder()
    q, _ = queue(recorder, interval_s=0.05)
    for i in range(5):
        q.put(i)
    assert q.pending() == [0, 1, 2, 3, 4] and recorder.batches == []
    await asyncio.sleep(0.2)
    assert recorder.batches == [[0, 1, 2, 3, 4]] and q.pending() == []
    await q.close()


async def test_flush_waits_for_the_batch_in_progress_then_drains_the_queue() -> None:
    recorder = Recorder(delay_s=0.1)
    q, _ = queue(recorder, interval_s=0.0)
    q.put(1)
    await asyncio.wait_for(recorder.started.wait(), 5)
    q.put(2)
    assert q.pending() == [1, 2]  # in progress, then queued
    await q.flush()
    assert recorder.batches == [[1], [2]] and q.pending() == []
    await q.close()


async def test_past_queue_max_items_are_dropped_and_counted() -> None:
    q, dropped = queue(Recorder(), queue_max=2)
    for i in range(4):
        q.put(i)
    assert q.pending() == [0, 1] and dropped == [1, 1]
    await q.close()


async def test_drop_and_settled_keep_unwanted_items_from_being_processed_later() -> None:
    recorder = Recorder(delay_s=0.1)
    q, _ = queue(recorder, interval_s=0.0)
    q.put(1)
    await asyncio.wait_for(recorder.started.wait(), 5)
    q.put(11)
    q.put(2)
    q.drop(lambda i: i > 10)
    await q.settled(lambda i: i == 1)  # returns once the batch holding 1 is done
    assert recorder.batches[0] == [1]
    await q.close()
    assert [i for b in recorder.batches for i in b] == [1, 2]


async def test_a_failing_batch_is_logged_and_the_queue_goes_on() -> None:
    calls: list[list[int]] = []

    async def flaky(batch: list[int]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("boom")

    q: BatchQueue[int] = BatchQueue(flaky, 60.0, 10, lambda n: None, "test")
    q.put(1)
    await q.flush()
    q.put(2)
    await q.flush()
    assert calls == [[1], [2]]
    await q.close()


async def test_close_processes_what_is_queued_and_then_takes_nothing() -> None:
    recorder = Recorder()
    q, _ = queue(recorder)
    q.put(1)
    await q.close()
    q.put(2)
    assert recorder.batches == [[1]] and q.pending() == []
