"""`recd serve --workers 2` end to end, on the embedded defaults: a supervisor, two workers on one port,
two shard nodes (one per worker) and a state node per role, as real processes on 127.0.0.1, over a small generated dataset that
`recd demo` loaded into the data directory first (a group serves what a single process wrote).

The tests share one group and run in file order: the last one stops it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator

import grpc
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2

from server.client import RecdClient
from server.domain import Interaction
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.tests.workers.group import (
    Group,
    alive,
    prepare_demo_state,
    recommend_channel,
    until_every_worker_answers,
)

WORKERS = 2


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Group, list[str]]]:
    root = tmp_path_factory.mktemp("group")
    demo = prepare_demo_state(root, items=2000, users=100)
    user_ids = pq.read_table(demo / "dataset" / "users.parquet", columns=["user_id"]).column(0).to_pylist()
    group = Group(root, demo / "state", WORKERS)
    try:
        group.start()
        yield group, user_ids
    finally:
        group.close()


@pytest.fixture
def group(users: tuple[Group, list[str]]) -> Group:
    return users[0]


@pytest.fixture
def user_ids(users: tuple[Group, list[str]]) -> list[str]:
    return users[1]


async def test_the_group_serves_once_every_worker_does_and_both_answer(
    group: Group, user_ids: list[str]
) -> None:
    state = group.state()
    assert state["serving"] and all(w["ready"] for w in state["workers"])
    assert [n["role"] for n in state["state_nodes"]] == ["profiles", "graph", "cache"]
    assert all(n["ready"] for n in state["state_nodes"]) and len(state["shard_nodes"]) == WORKERS
    assert await asyncio.to_thread(group.public_health) == health_pb2.HealthCheckResponse.SERVING
    answers = await until_every_worker_answers(group, user_ids[0], WORKERS)
    # Both catalogues were filled from the same shard nodes: the same answer whichever worker gave it.
    assert answers[0] and all(a == answers[0] for a in answers)
    page = await asyncio.to_thread(group.metrics)
    assert page["recd_workers_serving"] == WORKERS
    assert {f'recd_items{{worker="{i}"}}' for i in range(WORKERS)} <= set(page)
    assert all(page[f'recd_items{{worker="{i}"}}'] == 2000 for i in range(WORKERS))
    # The shard nodes' own series are on the group's page too, labelled with their node ids: between
    # them, every shard once.
    held = {
        node: [
            v for k, v in page.items() if k.startswith("recd_shard_items{") and f'shard_node="{node}"' in k
        ]
        for node in range(WORKERS)
    }
    assert all(held.values()) and sum(len(v) for v in held.values()) == 20
    assert sum(sum(v) for v in held.values()) == 2000


async def test_an_interaction_through_one_connection_shows_through_fresh_channels(
    group: Group, user_ids: list[str]
) -> None:
    user = user_ids[1]
    # Every worker answers the user first, so each has read (and cached) the state from before.
    before = await until_every_worker_answers(group, user, WORKERS)
    chosen = before[0][0]
    client = RecdClient(group.address, timeout_s=20)
    try:
        await client.record_interactions([Interaction(user, chosen, "click", 1.0, int(time.time() * 1000))])
    finally:
        await client.close()
    # The seen set is the state node's and the cached state was invalidated there: no worker, however
    # warm its own caller's channel, serves the item again.
    after = await until_every_worker_answers(group, user, WORKERS)
    assert all(chosen not in answer for answer in after), (chosen, after)


async def test_no_recommend_fails_while_a_worker_is_killed(group: Group, user_ids: list[str]) -> None:
    callers, requests_cap = 6, 5000
    answered: list[float] = []
    failures: list[str] = []
    done = asyncio.Event()

    async def caller(n: int) -> None:
        # One channel each: each caller's connection lands on one of the workers.
        rng = random.Random(n)
        async with recommend_channel(group.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            while not done.is_set() and len(answered) + len(failures) < requests_cap:
                request = recommender_pb2.RecommendRequest(user_id=rng.choice(user_ids), k=10)
                try:
                    await stub.Recommend(request, timeout=20)
                    answered.append(time.monotonic())
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    load = [asyncio.ensure_future(caller(n)) for n in range(callers)]
    try:
        before = await asyncio.to_thread(group.recommends_by_worker)
        await asyncio.sleep(1.5)
        during = await asyncio.to_thread(group.recommends_by_worker)
        # The victim: the worker that took the most of the load (so its death certainly cut calls).
        victim = max(during, key=lambda w: during[w] - before.get(w, 0.0))
        assert during[victim] > before.get(victim, 0.0)
        state = group.state()
        old_pid = state["workers"][int(victim)]["pid"]
        killed_at = time.monotonic()
        group.kill_child(old_pid)
        back = await asyncio.to_thread(
            group.wait,
            lambda s: s["workers"][int(victim)]["pid"] != old_pid and s["workers"][int(victim)]["ready"],
            120.0,
            f"worker {victim} to be restarted",
        )
        await asyncio.sleep(1.0)  # the load goes on over the restarted group
    finally:
        done.set()
        await asyncio.wait_for(asyncio.gather(*load), 60)
    assert not failures, failures[:5]
    assert sum(1 for t in answered if t > killed_at) > 10
    assert not alive(old_pid)
    assert back["workers"][int(victim)]["restarts"] == 1
    page = await asyncio.to_thread(group.metrics)
    assert page['recd_worker_restarts_total{role="worker"}'] == 1
    # The restarted worker takes new connections again.
    await until_every_worker_answers(group, user_ids[2], WORKERS)


def test_a_graceful_stop_leaves_no_process_behind(group: Group) -> None:
    pids = group.pids(group.state())
    assert len(pids) == 2 * WORKERS + 3 and all(
        alive(p) for p in pids
    )  # a shard node per worker, 3 state nodes
    assert group.stop(signal.SIGTERM) == 0
    assert not [p for p in pids if alive(p)]
    assert not (group.run_dir / "group.json").exists() and not list(group.run_dir.glob("*.sock"))
    log = group.log_tail(100_000)
    # Workers drained before the state nodes and the shard nodes stopped.
    drained = log.index("worker-0] server.api.server: recd stopped")
    assert all(
        drained < log.index(f"state-node-{role}] server.workers.state_node: state node stopped")
        for role in ("profiles", "graph", "cache")
    )
    assert "Fatal Python error" not in log, log[-3000:]
