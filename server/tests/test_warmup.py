"""The request path is warmed once a burst of writes goes quiet, once per burst, and never fails a caller."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from server.domain import ItemRecord
from server.tests.conftest import make_catalogue, make_config
from server.warmup import Warmer
from server.wiring import build_recd


async def test_a_burst_of_pokes_warms_once_after_it_goes_quiet() -> None:
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def warm() -> None:
        runs.append(loop.time())

    warmer = Warmer(warm, quiet_s=0.05)
    last_poke = 0.0
    for _ in range(5):
        warmer.poke()
        last_poke = loop.time()
        await asyncio.sleep(0.02)
    assert runs == []  # still writing: not yet
    await asyncio.sleep(0.15)
    assert len(runs) == 1 and runs[0] >= last_poke + 0.05
    warmer.poke()
    await asyncio.sleep(0.15)
    assert len(runs) == 2 and warmer.runs == 2
    await warmer.close()


async def test_a_failing_warm_up_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def warm() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    warmer = Warmer(warm, quiet_s=0.01)
    with caplog.at_level(logging.WARNING, logger="server.warmup"):
        warmer.poke()
        await asyncio.sleep(0.1)
    assert calls == 1 and warmer.runs == 0
    assert warmer._task is not None and warmer._task.done() and warmer._task.exception() is None
    assert "warming the request path failed: RuntimeError('boom')" in caplog.text
    warmer.poke()  # still usable afterwards
    await asyncio.sleep(0.1)
    assert calls == 2
    await warmer.close()


async def test_item_writes_warm_the_search_path_of_a_frontend() -> None:
    toy = make_catalogue(300)
    recd = build_recd(make_config())
    recd.warmer._quiet_s = 0.05
    try:
        await recd.catalog.upsert_items(
            [
                ItemRecord(item_id, toy.vectors[i], toy.attributes[i], float(toy.popularity[i]), 0)
                for i, item_id in enumerate(toy.item_ids)
            ]
        )
        for _ in range(100):
            if recd.warmer.runs:
                break
            await asyncio.sleep(0.05)
        assert recd.warmer.runs == 1
        assert len(recd.items.sample_ids(3)) == 3
        assert np.all([recd.items.row_of(i) is not None for i in recd.items.sample_ids(5, seed=1)])
    finally:
        await recd.close()
