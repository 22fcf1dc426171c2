"""Fixtures for tests of two frontends over one set of shards (`from ... import *` in the test module):
`config` (embedded, and real backends under the `real` marker) and `pair`, two clients of two frontends
with the toy catalogue loaded through the first and seen by the second."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.client import RecdClient
from server.config import Config
from server.tests.api.test_end_to_end import load_toy
from server.tests.backends.real_backends import on_real_backends
from server.tests.conftest import ToyCatalogue, frontends_over_one_host, make_config

__all__ = ["Pair", "config", "eventually", "pair"]

Pair = tuple[RecdClient, RecdClient]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s")
        await asyncio.sleep(0.02)


@pytest.fixture(params=["embedded", pytest.param("real", marks=pytest.mark.real)])
async def config(request: pytest.FixtureRequest) -> AsyncIterator[Config]:
    if request.param == "embedded":
        yield make_config()
        return
    async with on_real_backends(make_config()) as config:
        yield config


@pytest.fixture
async def pair(config: Config, toy: ToyCatalogue) -> AsyncIterator[Pair]:
    """The toy catalogue loaded through the first frontend only, and synced to the second (through the
    shards' change feed) before the test starts."""
    async with frontends_over_one_host(config, 2) as servers:
        a, b = (RecdClient(s.address, timeout_s=20.0) for s in servers)
        try:
            await load_toy(a, toy)

            async def synced() -> bool:
                _, missing = await b.get_items(toy.item_ids)
                return not missing

            await eventually(synced)
            yield a, b
        finally:
            await a.close()
            await b.close()
