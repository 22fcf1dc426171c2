"""A table of bad inputs for every RPC: INVALID_ARGUMENT with a message naming the field and the limit."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from server.config import Config
from server.gen.recd.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
)
from server.tests.conftest import DIM, make_config

GOOD = [1.0] + [0.0] * (DIM - 1)
LONG_ID = "x" * 257


def item(**kw: Any) -> catalog_pb2.Item:
    fields: dict[str, Any] = {"item_id": "i1", "embedding": GOOD}
    fields.update(kw)
    return catalog_pb2.Item(**fields)


R = recommender_pb2
C = catalog_pb2
CASES: list[tuple[str, str, Callable[[], Any], str]] = [
    ("Recommender", "Recommend", lambda: R.RecommendRequest(user_id="", k=5), "user_id must not be empty"),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id=LONG_ID),
        "user_id is 257 bytes; the limit is 256",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", k=1001),
        "k must be between 1 and 1000",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", diversity=1.5),
        "diversity must be within [0, 1]",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", diversity=math.nan),
        "diversity must be within [0, 1]",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", filter={"lang": common_pb2.AllowedValues()}),
        "filter['lang'] lists no allowed values",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", exclude_item_ids=[""]),
        "exclude_item_ids[0] must not be empty",
    ),
    ("Recommender", "SimilarItems", lambda: R.SimilarItemsRequest(item_id=""), "item_id must not be empty"),
    (
        "Recommender",
        "SimilarItems",
        lambda: R.SimilarItemsRequest(item_id="i", k=5000),
        "k must be between 1 and 1000",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(),
        "interactions must not be empty",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(interactions=[R.Interaction(user_id="u", item_id="")]),
        "interactions[0].item_id must not be empty",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(
            interactions=[R.Interaction(user_id="u", item_id="i", weight=-1)]
        ),
        "interactions[0].weight must be finite and >= 0",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(
            interactions=[R.Interaction(user_id="u", item_id="i", weight=math.inf)]
        ),
        "interactions[0].weight must be finite",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(
            interactions=[R.Interaction(user_id="u", item_id="i", timestamp_ms=-5)]
        ),
        "timestamp_ms must be >= 0",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(
            interactions=[R.Interaction(user_id="u", item_id="i", timestamp_ms=2**62)]
        ),
        "is more than a day in the future",
    ),
    (
        "Recommender",
        "RecordInteractions",
        lambda: R.RecordInteractionsRequest(interactions=[R.Interaction(user_id="u", item_id="i")] * 11),
        "has 11 entries; the limit is 10 per call",
    ),
    ("Catalog", "UpsertItems", lambda: C.UpsertItemsRequest(), "items must not be empty"),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[1.0, 2.0])]),
        f"items[0].embedding has dimension 2; this deployment's dimension is {DIM}",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[math.nan] * DIM)]),
        "items[0].embedding contains NaN or Inf",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[math.inf] + [0.0] * (DIM - 1))]),
        "contains NaN or Inf",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[0.0] * DIM)]),
        "items[0].embedding is all zeros",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[1e6] * DIM)]),
        "FP16 range",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(item_id="")]),
        "items[0].item_id must not be empty",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(item_id=LONG_ID)]),
        "items[0].item_id is 257 bytes; the limit is 256",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(), item()]),
        "appears twice in the batch",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(popularity=-1)]),
        "items[0].popularity must be finite and >= 0",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(item_id=f"i{n}") for n in range(11)]),
        "items has 11 entries; the limit is 10",
    ),
    ("Catalog", "DeleteItems", lambda: C.DeleteItemsRequest(), "item_ids must not be empty"),
    (
        "Catalog",
        "DeleteItems",
        lambda: C.DeleteItemsRequest(item_ids=["ok", ""]),
        "item_ids[1] must not be empty",
    ),
    ("Catalog", "GetItems", lambda: C.GetItemsRequest(item_ids=[LONG_ID]), "item_ids[0] is 257 bytes"),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(users=[C.User(user_id="")]),
        "users[0].user_id must not be empty",
    ),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(users=[C.User(user_id="u", embedding=[1.0])]),
        "users[0].embedding has dimension 1",
    ),
    (
        "Catalog",
        "UpsertEdges",
        lambda: C.UpsertEdgesRequest(edges=[C.Edge(src_item_id="a", dst_item_id="b", score=0)]),
        "edges[0].score must be within (0, 1]",
    ),
    (
        "Catalog",
        "UpsertEdges",
        lambda: C.UpsertEdgesRequest(edges=[C.Edge(src_item_id="a", dst_item_id="b", score=math.nan)]),
        "edges[0].score must be within (0, 1]",
    ),
    (
        "Catalog",
        "UpsertEdges",
        lambda: C.UpsertEdgesRequest(edges=[C.Edge(src_item_id="a", dst_item_id="a", score=0.5)]),
        "self-loops are not allowed",
    ),
    (
        "Catalog",
        "UpsertEdges",
        lambda: C.UpsertEdgesRequest(edges=[C.Edge(src_item_id="", dst_item_id="a", score=0.5)]),
        "edges[0].src_item_id must not be empty",
    ),
]


@pytest.fixture
def config() -> Config:
    config = make_config()
    config.server.max_batch = 10
    return config


@pytest.mark.parametrize(
    ("service", "method", "build", "message"), CASES, ids=[f"{c[1]}:{c[3][:40]}" for c in CASES]
)
async def test_bad_input_is_invalid_argument(
    server_address: str, service: str, method: str, build: Callable[[], Any], message: str
) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub: Any = (
            recommender_pb2_grpc.RecommenderStub(channel)
            if service == "Recommender"
            else catalog_pb2_grpc.CatalogStub(channel)
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(build(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert message in (err.value.details() or "")
        # the server is still healthy after the bad call
        await stub_ok(channel)


async def stub_ok(channel: grpc.aio.Channel) -> None:
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    reply = await stub.Recommend(recommender_pb2.RecommendRequest(user_id="anyone", k=3), timeout=10)
    assert reply.model_version


async def test_over_the_concurrency_cap_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.api.server import RecdServer
    from server.recommender import Recommender
    from server.wiring import build_recd

    config = make_config()
    config.server.max_concurrent_rpcs = 2
    gate = asyncio.Event()
    original = Recommender.recommend

    async def held(self: Recommender, *args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Recommender, "recommend", held)
    server = RecdServer(build_recd(config), config)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            request = recommender_pb2.RecommendRequest(user_id="u", k=1)
            holders = [asyncio.ensure_future(stub.Recommend(request, timeout=10)) for _ in range(2)]
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Recommend(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            await asyncio.gather(*holders)
    finally:
        await server.stop()
