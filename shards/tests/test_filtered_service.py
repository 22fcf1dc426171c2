"""Filters and exclusions over the wire: both ShardClient implementations give the host's answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from server.gen.recd.v1 import shard_pb2 as pb
from server.gen.recd.v1 import shard_pb2_grpc
from shards import convert
from shards.client import ShardClient
from shards.host import ShardHost
from shards.payload import ItemMetadata, encode_metadata
from shards.records import (
    NO_LABEL,
    AttributeFilter,
    ErrorKind,
    IndexParams,
    RecordBatch,
    ShardError,
    ShardHits,
)
from shards.service import serve_node
from shards.tests.helpers import connected, unit

DIM = 16
SHARDS = 4
ITEMS = 2000
LANGS = np.array(["en", "de", "fr", "xx"])


@dataclass
class Env:
    host: ShardHost
    client: ShardClient
    data: np.ndarray
    lang: np.ndarray


def _host() -> tuple[ShardHost, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    data = unit(rng.normal(size=(ITEMS, DIM)))
    lang = LANGS[rng.choice(4, size=ITEMS, p=[0.6, 0.25, 0.14, 0.01])]
    labels = np.arange(ITEMS, dtype=np.uint64)
    host = ShardHost(IndexParams(dim=DIM, ef_search=100), None, range(SHARDS))
    payloads = [encode_metadata(ItemMetadata({"lang": str(v)}, 1.0, 0)) for v in lang]
    host.upsert(
        {
            s: RecordBatch(
                labels[labels % SHARDS == s],
                [f"i{i}" for i in np.flatnonzero(labels % SHARDS == s)],
                data[labels % SHARDS == s],
                [payloads[i] for i in np.flatnonzero(labels % SHARDS == s)],
            )
            for s in range(SHARDS)
        }
    )
    return host, data, lang


@pytest.fixture(params=["in-process", "grpc"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    host, data, lang = _host()
    async with connected(host, request.param) as (client, _):
        yield Env(host, client, data, lang)


def same(a: ShardHits | ShardError, b: ShardHits | ShardError) -> bool:
    if isinstance(a, ShardHits) and isinstance(b, ShardHits):
        return a.equals(b)
    return a == b


async def test_filtered_search_with_large_exclusions_matches_the_host(env: Env) -> None:
    queries = (env.data[:6] + 0.05).astype(np.float32)
    rng = np.random.default_rng(1)
    exclude = [
        np.sort(rng.choice(ITEMS, size=n, replace=False).astype(np.uint64)) for n in (0, 5, 500, 1000, 10, 0)
    ]
    filters = [{"lang": ["xx"]}, {"lang": ["de", "fr"]}, None, {"lang": ["en"]}, {"lang": ["nope"]}, None]
    got = await env.client.search(
        queries, [0, 1, 2, 3], k=7, ef=0, exclude=exclude, timeout_s=5, filters=filters
    )
    expected = env.host.search(queries, [0, 1, 2, 3], k=7, ef=0, exclude=exclude, filters=filters)
    assert list(got) == [0, 1, 2, 3]
    for shard in got:
        assert same(got[shard], expected[shard])
        hits = got[shard]
        assert isinstance(hits, ShardHits)
        for i, f in enumerate(filters):
            labels = hits.labels[i][hits.labels[i] != NO_LABEL].astype(np.int64)
            assert not np.isin(labels, exclude[i].astype(np.int64)).any()
            if f is not None:
                assert np.isin(env.lang[labels], f["lang"]).all()
        assert (hits.labels[4] == NO_LABEL).all()  # no item has that value


async def test_bad_filters_raise_the_same_error(env: Env) -> None:
    with pytest.raises(ShardError) as err:
        await env.client.search(env.data[:1], [0], k=5, filters=[{"": ["x"]}])
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and err.value.message.startswith("filters[0]")


@pytest.mark.parametrize(
    ("exclude", "filters"),
    [
        (None, None),
        ([np.array([3, 1, 2], np.uint64), np.zeros(0, np.uint64)], None),
        (None, [{"lang": ["en", "de"], "tier": ["a"]}, None]),
        (
            [np.arange(10_000, dtype=np.uint64) * np.uint64(3), np.array([2**64 - 2], np.uint64)],
            [None, {"x": ["y"]}],
        ),
    ],
    ids=["nothing", "exclusions", "filters", "both, 10k labels"],
)
def test_constraints_round_trip(
    exclude: list[np.ndarray] | None, filters: list[dict[str, list[str]] | None] | None
) -> None:
    request = convert.search_request(np.zeros((2, DIM), np.float32), [0], 5, 0, exclude, filters)
    wire = pb.ShardSearchRequest.FromString(request.SerializeToString())
    got_exclude, got_filters = convert.constraints_from_proto(wire)
    if exclude is None and filters is None:
        assert not wire.constraints and (got_exclude, got_filters) == (None, None)
        return
    assert got_exclude is not None and got_filters is not None
    for i in range(2):
        sent = exclude[i] if exclude else np.zeros(0, np.uint64)
        np.testing.assert_array_equal(got_exclude[i], sent)
        sent_filter = filters[i] if filters else None
        received = got_filters[i]
        assert not isinstance(received, AttributeFilter)  # plain mappings: the host checks them
        assert (AttributeFilter.of(received) if received else None) == (
            AttributeFilter.of(sent_filter) if sent_filter else None
        )
    if exclude is not None:  # 8 bytes a label, not a varint each
        assert len(wire.constraints[0].exclude_labels) == 8 * len(exclude[0])


async def test_the_legacy_exclusion_list_is_still_honoured() -> None:
    host, data, _ = _host()
    node = await serve_node(host, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            nearest = host.search(data[:1], [0], k=3)[0]
            assert isinstance(nearest, ShardHits)
            request = convert.search_request(data[:1], [0], 3, 0, None)
            request.exclude.append(pb.LabelList(labels=nearest.labels[0, :2].tolist()))
            response = await stub.Search(request, timeout=5)
            labels = response.shards[0].labels
            assert labels[0] == nearest.labels[0, 2] and not set(labels) & set(nearest.labels[0, :2].tolist())
    finally:
        await node.stop(0)
        host.close()


async def test_a_malformed_exclusion_is_invalid() -> None:
    host, data, _ = _host()
    node = await serve_node(host, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            request = convert.search_request(data[:1], [0], 3, 0, None)
            request.constraints.append(pb.QueryConstraints(exclude_labels=b"\x01\x02\x03"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await shard_pb2_grpc.ShardStub(channel).Search(request, timeout=5)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "constraints[0].exclude_labels" in (err.value.details() or "")
    finally:
        await node.stop(0)
        host.close()
