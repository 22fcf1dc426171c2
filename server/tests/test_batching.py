import asyncio
import time

import pytest

from server.batching import MicroBatcher


async def test_concurrent_submissions_share_one_batch() -> None:
    calls: list[list[int]] = []

    async def process(items: list[int]) -> list[int]:
        calls.append(items)
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=64, max_wait_s=0.01)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    assert len(calls) == 1 and sorted(calls[0]) == list(range(20))


async def test_full_batches_close_at_max_batch() -> None:
    sizes: list[int] = []

    async def process(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=8, max_wait_s=1.0)
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(24))), timeout=0.5)
    assert sizes == [8, 8, 8]


async def test_deadline_closes_the_batch_before_max_wait() -> None:
    async def process(items: list[int]) -> list[int]:
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=64, max_wait_s=5.0)
    started = time.monotonic()
    assert await batcher.submit(1, deadline=time.monotonic() + 0.02) == 1
    # a 5 s wait would have been far past the request's deadline
    assert time.monotonic() - started < 1.0


async def test_a_failing_batch_fails_each_waiter() -> None:
    async def process(items: list[int]) -> list[int]:
        raise RuntimeError("boom")

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=4, max_wait_s=0.001)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_wrong_result_count_is_an_error_not_a_mixup() -> None:
    async def process(items: list[int]) -> list[int]:
        return items[:-1]

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=4, max_wait_s=0.001)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))


async def test_batches_grow_while_every_slot_is_busy() -> None:
    release = asyncio.Event()
    sizes: list[int] = []

    async def process(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await release.wait()
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=64, max_wait_s=0.0005, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first batch is now running and holds the only slot
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 31)]
    await asyncio.sleep(0.02)  # far past max_wait: they still wait for the slot, together
    release.set()
    await asyncio.gather(first, *rest)
    assert sizes == [1, 30]
