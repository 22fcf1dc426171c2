"""Two frontend processes over the same shard nodes: writes through one are served by the other, and a
frontend killed with -9 and started again catches up with what was written meanwhile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from server.client import RecdClient
from server.tests.cluster.procs import get_items, load_items, start_cluster, unit_vectors


async def until(check, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_a_second_frontend_sees_writes_and_catches_up_after_kill_9(tmp_path: Path) -> None:
    with start_cluster(tmp_path, nodes=2, replication=2) as cluster:
        a = cluster.frontend_address
        b = cluster.start_another_frontend("frontend-b")
        first = [f"first-{i}" for i in range(300)]
        await load_items(a, first, unit_vectors(300, 1))

        async def b_has_first() -> bool:
            return await get_items(b, first) == set(first)

        await until(b_has_first)

        cluster.kill_frontend("frontend-b")  # kill -9, then writes it cannot see
        second = [f"second-{i}" for i in range(200)]
        await load_items(a, second, unit_vectors(200, 2))
        client = RecdClient(a, timeout_s=30)
        try:
            assert await client.delete_items(first[:100]) == 100
        finally:
            await client.close()

        b = cluster.start_another_frontend("frontend-b")  # a fresh process: scan, then the feed
        assert await get_items(b, first + second) == set(first[100:] + second)
        third = [f"third-{i}" for i in range(50)]
        await load_items(a, third, unit_vectors(50, 3))

        async def b_has_third() -> bool:
            return await get_items(b, third) == set(third)

        await until(b_has_third)
