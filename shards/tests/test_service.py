"""One contract suite, run against both ShardClient implementations, plus the wire-level error table."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.gen.recd.v1 import shard_pb2 as pb
from server.gen.recd.v1 import shard_pb2_grpc
from shards.client import GrpcShardClient, ShardClient
from shards.host import ShardHost
from shards.records import ErrorKind, IndexParams, RecordBatch, ShardError, ShardHits
from shards.service import ShardNodeServer, serve_node
from shards.tests.helpers import batch_of, connected, unit

DIM = 16
SHARDS = 4
ITEMS = 1000


@dataclass
class Env:
    host: ShardHost
    client: ShardClient
    data: np.ndarray
    node: ShardNodeServer | None


def _host() -> tuple[ShardHost, np.ndarray]:
    data = unit(np.random.default_rng(0).normal(size=(ITEMS, DIM)))
    labels = np.arange(ITEMS, dtype=np.uint64)
    host = ShardHost(IndexParams(dim=DIM), None, range(SHARDS))
    host.upsert(
        {s: batch_of(labels[labels % SHARDS == s], data[labels % SHARDS == s]) for s in range(SHARDS)}
    )
    return host, data


@pytest.fixture(params=["in-process", "grpc"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    host, data = _host()
    async with connected(host, request.param) as (client, node):
        yield Env(host, client, data, node)


@pytest.fixture
async def stub() -> AsyncIterator[shard_pb2_grpc.ShardStub]:
    host, _ = _host()
    node = await serve_node(host, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        yield shard_pb2_grpc.ShardStub(channel)
    await node.stop(0)
    host.close()


def same(a: ShardHits | ShardError, b: ShardHits | ShardError) -> bool:
    if isinstance(a, ShardHits) and isinstance(b, ShardHits):
        return a.equals(b)
    return a == b


# ---------------------------------------------------------------------- the contract, for both clients
async def test_search_matches_the_host(env: Env) -> None:
    queries = env.data[:5] + 0.01
    exclude = [np.arange(i, dtype=np.uint64) for i in range(5)]
    for ef, excl in [(0, None), (40, exclude), (300, exclude)]:
        got = await env.client.search(queries, [3, 1, 0, 2], k=7, ef=ef, exclude=excl, timeout_s=5)
        expected = env.host.search(queries, [3, 1, 0, 2], k=7, ef=ef, exclude=excl)
        assert list(got) == [3, 1, 0, 2]
        assert all(same(got[s], expected[s]) for s in expected)
        for hits in got.values():
            assert (
                isinstance(hits, ShardHits)
                and hits.labels.dtype == np.uint64
                and hits.scores.dtype == np.float32
            )


async def test_search_reports_an_unknown_shard_per_shard(env: Env) -> None:
    got = await env.client.search(env.data[:2], [0, 42], k=3, timeout_s=5)
    assert isinstance(got[0], ShardHits)
    error = got[42]
    assert isinstance(error, ShardError) and error.kind is ErrorKind.NOT_FOUND and "42" in error.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda q: {"queries": q[:, :8]}, "dim"),
        (lambda q: {"k": 0}, "k"),
        (lambda q: {"k": 10_001}, "k"),
        (lambda q: {"exclude": [np.array([1], np.uint64)]}, "exclude"),
    ],
    ids=["dim", "k=0", "k too big", "exclude count"],
)
async def test_bad_search_raises_the_same_error(env: Env, change: Callable[..., dict], field: str) -> None:
    args = {"queries": env.data[:3], "shard_ids": [0, 1], "k": 5, "ef": 0, "exclude": None}
    args.update(change(env.data[:3]))
    with pytest.raises(ShardError) as direct:
        env.host.search(**args)
    with pytest.raises(ShardError) as err:
        await env.client.search(**args, timeout_s=5)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT
    assert err.value.message == direct.value.message
    assert err.value.message.startswith(field)


async def test_upsert_fetch_delete_round_trip(env: Env) -> None:
    vectors = unit(np.random.default_rng(5).normal(size=(3, DIM)))
    batch = RecordBatch(
        np.array([2**64 - 2, 5000, 5001], np.uint64),
        ["ü-1", "b", ""],
        vectors,
        [b"\x00\xff", b"", b"m" * 1000],
    )
    assert await env.client.upsert({1: batch, 2: batch_of([6002], vectors[:1])}, timeout_s=5) == 4
    fetched = await env.client.fetch(1, np.array([5001, 78, 2**64 - 2], np.uint64), timeout_s=5)
    assert fetched.equals(batch.take([2, 0]))
    assert await env.client.delete(1, [5000, 5001, 123456], timeout_s=5) == 2
    empty = await env.client.fetch(1, [5000, 5001], timeout_s=5)
    assert len(empty) == 0 and empty.vectors.shape == (0, DIM)
    hits = await env.client.search(vectors[:1], [1], k=1, timeout_s=5)
    assert isinstance(hits[1], ShardHits) and hits[1].labels[0, 0] == 2**64 - 2


@pytest.mark.parametrize("op", ["upsert", "delete", "fetch", "scan"])
async def test_unknown_shard_is_not_found(env: Env, op: str) -> None:
    with pytest.raises(ShardError) as err:
        if op == "upsert":
            await env.client.upsert({77: batch_of([1], env.data[:1])}, timeout_s=5)
        elif op == "delete":
            await env.client.delete(77, [1], timeout_s=5)
        elif op == "fetch":
            await env.client.fetch(77, [1], timeout_s=5)
        else:
            async for _ in env.client.scan(77):
                pass
    assert err.value.kind is ErrorKind.NOT_FOUND and not err.value.transient


async def test_bad_upsert_is_invalid(env: Env) -> None:
    with pytest.raises(ShardError) as err:
        await env.client.upsert({0: batch_of([1, 2], np.ones((2, DIM + 1)))}, timeout_s=5)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and "vectors" in err.value.message


async def test_scan_streams_every_live_item(env: Env) -> None:
    await env.client.delete(2, [2, 6, 10], timeout_s=5)
    batches = [b async for b in env.client.scan(2, batch_size=60)]
    assert all(0 < len(b) <= 60 for b in batches)
    merged = RecordBatch.concat(batches, DIM)
    expected = [label for label in range(ITEMS) if label % SHARDS == 2 and label not in (2, 6, 10)]
    assert sorted(merged.labels.tolist()) == expected
    np.testing.assert_array_equal(merged.vectors, env.data[merged.labels.astype(np.int64)])


async def test_stats(env: Env) -> None:
    stats = await env.client.stats(timeout_s=5)
    assert stats == env.host.stats()
    assert stats.dim == DIM and sum(s.items for s in stats.shards) == ITEMS


async def test_deadlines_are_transient_errors(env: Env) -> None:
    blocked = env.host.shard(1)
    blocked._lock.acquire_write()  # a shard stuck behind a long write
    try:
        got = await env.client.search(env.data[:2], [0, 1, 2], k=3, timeout_s=0.3)
        assert isinstance(got[0], ShardHits) and isinstance(got[2], ShardHits)
        late = got[1]
        assert isinstance(late, ShardError) and late.kind is ErrorKind.DEADLINE_EXCEEDED and late.transient
        with pytest.raises(ShardError) as err:
            await env.client.upsert({1: batch_of([9001], env.data[:1])}, timeout_s=0.2)
        assert err.value.kind is ErrorKind.DEADLINE_EXCEEDED and err.value.transient
    finally:
        blocked._lock.release_write()


# ---------------------------------------------------------------------- gRPC only
async def test_unreachable_node_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = GrpcShardClient(f"127.0.0.1:{port}")
    try:
        got = await client.search(np.ones((1, DIM), np.float32), [0, 1], k=3, timeout_s=2)
        assert all(isinstance(e, ShardError) and e.transient for e in got.values())
        with pytest.raises(ShardError) as err:
            await client.upsert({0: batch_of([1], np.ones((1, DIM)))}, timeout_s=2)
        assert err.value.transient
    finally:
        await client.close()


def _search(**change: object) -> pb.ShardSearchRequest:
    queries = np.ones((2, DIM), np.float32)
    fields: dict[str, object] = {
        "queries": queries.tobytes(),
        "n_queries": 2,
        "dim": DIM,
        "shard_ids": [0, 1],
        "k": 5,
        "ef": 0,
    }
    fields.update(change)
    return pb.ShardSearchRequest(**fields)  # type: ignore[arg-type]


def _record(label: int, vector_bytes: int = DIM * 4) -> pb.ShardRecord:
    return pb.ShardRecord(label=label, item_id=f"i{label}", vector=b"\x00" * vector_bytes)


BAD_REQUESTS = [
    ("Search", _search(queries=b"\x00" * 12), grpc.StatusCode.INVALID_ARGUMENT, "queries"),
    ("Search", _search(dim=8, queries=b"\x00" * 64), grpc.StatusCode.INVALID_ARGUMENT, "dim"),
    ("Search", _search(k=0), grpc.StatusCode.INVALID_ARGUMENT, "k"),
    ("Search", _search(k=10_001), grpc.StatusCode.INVALID_ARGUMENT, "k"),
    ("Search", _search(exclude=[pb.LabelList(labels=[1])]), grpc.StatusCode.INVALID_ARGUMENT, "exclude"),
    (
        "Upsert",
        pb.ShardUpsertRequest(batches=[pb.ShardRecords(shard_id=99, records=[_record(1)])]),
        grpc.StatusCode.NOT_FOUND,
        "shard_id",
    ),
    (
        "Upsert",
        pb.ShardUpsertRequest(batches=[pb.ShardRecords(shard_id=0, records=[_record(1), _record(2, 10)])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batches[0].records[1].vector",
    ),
    (
        "Upsert",
        pb.ShardUpsertRequest(batches=[pb.ShardRecords(shard_id=0, records=[_record(2**64 - 1)])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "labels",
    ),
    ("Delete", pb.ShardDeleteRequest(shard_id=99, labels=[1]), grpc.StatusCode.NOT_FOUND, "shard_id"),
    ("Fetch", pb.ShardFetchRequest(shard_id=99, labels=[1]), grpc.StatusCode.NOT_FOUND, "shard_id"),
    ("Scan", pb.ShardScanRequest(shard_id=99), grpc.StatusCode.NOT_FOUND, "shard_id"),
    (
        "Scan",
        pb.ShardScanRequest(shard_id=0, batch_size=10**6),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch_size",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "field"),
    BAD_REQUESTS,
    ids=[f"{m}-{f}-{c.name}" for m, _, c, f in BAD_REQUESTS],
)
async def test_bad_requests_get_the_right_status(
    stub: shard_pb2_grpc.ShardStub, method: str, request_: object, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        call = getattr(stub, method)(request_, timeout=5)
        if method == "Scan":
            async for _ in call:
                pass
        else:
            await call
    assert err.value.code() == code
    assert field in (err.value.details() or ""), err.value.details()


async def test_health_and_graceful_stop() -> None:
    host, _ = _host()
    node = await serve_node(host, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recd.v1.Shard"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await node.stop(1.0)
    await node.wait_for_termination(1.0)  # returns at once: the server has stopped
    host.close()


SHARD_METHODS = list(pb.DESCRIPTOR.services_by_name["Shard"].methods)


@pytest.mark.parametrize("method", SHARD_METHODS, ids=[m.name for m in SHARD_METHODS])
async def test_bytes_that_are_no_request_are_invalid_argument(method: object) -> None:
    host, _ = _host()
    node = await serve_node(host, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            path = f"/recd.v1.Shard/{method.name}"  # type: ignore[attr-defined]
            for raw in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0b"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    if method.server_streaming:  # type: ignore[attr-defined]
                        async for _ in channel.unary_stream(path)(raw, timeout=5):
                            pass
                    else:
                        await channel.unary_unary(path)(raw, timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                assert "not a valid recd.v1.Shard" in (err.value.details() or "")
            stats = await shard_pb2_grpc.ShardStub(channel).Stats(pb.ShardStatsRequest(), timeout=5)
            assert stats.dim == host.dim
    finally:
        await node.stop(0)
        host.close()
