"""cancel_and_wait stops a task even when one cancellation is swallowed, as asyncio.wait_for on Python
3.11 can do when the awaited call completes at the moment of the cancel (the hang it fixes: the edge's
deletes watch kept looping after its close)."""

from __future__ import annotations

import asyncio

from server.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 2:
                    raise
                swallowed += 1  # what a swallowed cancellation looks like from the outside: it goes on

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task, None]), 5)
    assert task.cancelled() and swallowed == 2


async def test_done_tasks_and_none_are_fine() -> None:
    async def quick() -> int:
        return 1

    task = asyncio.get_running_loop().create_task(quick())
    await task
    await cancel_and_wait([task, None])
    await cancel_and_wait([])


async def test_what_a_stopped_task_raised_is_read_not_left_for_asyncio_to_log() -> None:
    async def raises_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("failed while stopping") from None

    task = asyncio.get_running_loop().create_task(raises_on_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert task.done() and not task.cancelled()
    # Retrieved: asyncio would otherwise report "Task exception was never retrieved" when it is freed.
    assert task._log_traceback is False  # type: ignore[attr-defined]
