"""A table of bad inputs for every RPC: INVALID_ARGUMENT with a message naming the field and the limit."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from server import metrics
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
    # --- sizes (server.limits), refused before the request is converted ---------------------------------
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(
            user_id="u", filter={f"a{n}": common_pb2.AllowedValues(values=["x"]) for n in range(100_000)}
        ),
        "filter has 100000 attributes; the limit is 32 (server.limits.max_filter_attributes)",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(
            user_id="u", filter={"lang": common_pb2.AllowedValues(values=[f"v{n}" for n in range(1001)])}
        ),
        "filter['lang'] has 1001 values; the limit is 1000 (server.limits.max_filter_values)",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", filter={"n" * 129: common_pb2.AllowedValues(values=["x"])}),
        "is 129 bytes; the limit is 128 bytes (server.limits.max_attribute_name_bytes)",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(
            user_id="u", filter={"lang": common_pb2.AllowedValues(values=["é" * 513])}
        ),
        "filter['lang'] value is 1026 bytes; the limit is 1024 bytes",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", context={f"k{n}": "v" for n in range(65)}),
        "context has 65 entries; the limit is 64 (server.limits.max_context_entries)",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", context={"lang": "x" * 1_000_000}),
        "context['lang'] is 1000000 bytes; the limit is 1024 bytes",
    ),
    (
        "Recommender",
        "Recommend",
        lambda: R.RecommendRequest(user_id="u", exclude_item_ids=[f"i{n}" for n in range(10_001)]),
        "exclude_item_ids has 10001 entries; the limit is 10000 (server.limits.max_exclude_ids)",
    ),
    (
        "Recommender",
        "SimilarItems",
        lambda: R.SimilarItemsRequest(
            item_id="i", filter={f"a{n}": common_pb2.AllowedValues(values=["x"]) for n in range(33)}
        ),
        "filter has 33 attributes; the limit is 32",
    ),
    (
        "Catalog",
        "UpsertItems",
        # The request that blocked a server for seconds and grew it by gigabytes: one column per name.
        lambda: C.UpsertItemsRequest(items=[item(attributes={f"attr{n}": "v" for n in range(100_000)})]),
        "items[0].attributes has 100000 entries; the limit is 64 (server.limits.max_attributes_per_item)",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(attributes={"desc": "x" * 1_048_576})]),
        "items[0].attributes['desc'] is 1048576 bytes; the limit is 1024 bytes",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(attributes={"k" * 200: "v"})]),
        "is 200 bytes; the limit is 128 bytes (server.limits.max_attribute_name_bytes)",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(attributes={"": "v"})]),
        "items[0].attributes has an empty key",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[1.0] * 1_000_000)]),
        f"items[0].embedding has dimension 1000000; this deployment's dimension is {DIM}",
    ),
    (
        "Catalog",
        "UpsertItems",
        # Each value passes the finite / FP16 / non-zero checks, but the float32 norm underflows to 0.
        lambda: C.UpsertItemsRequest(items=[item(embedding=[1e-30] * DIM)]),
        "items[0].embedding has a norm of 4e-30, too small to normalise in float32",
    ),
    (
        "Catalog",
        "UpsertItems",
        lambda: C.UpsertItemsRequest(items=[item(embedding=[1e-45] + [0.0] * (DIM - 1))]),
        "too small to normalise in float32",
    ),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(
            users=[C.User(user_id="u1"), C.User(user_id="u2"), C.User(user_id="u1")]
        ),
        "users[2].user_id 'u1' appears twice in the batch",
    ),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(
            users=[C.User(user_id="u", attributes={f"a{n}": "v" for n in range(65)})]
        ),
        "users[0].attributes has 65 entries; the limit is 64 (server.limits.max_attributes_per_user)",
    ),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(users=[C.User(user_id="u", attributes={"bio": "x" * 1_048_576})]),
        "users[0].attributes['bio'] is 1048576 bytes; the limit is 1024 bytes",
    ),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(users=[C.User(user_id="u", embedding=[1e-40] * DIM)]),
        "users[0].embedding has a norm of",
    ),
    (
        "Catalog",
        "UpsertUsers",
        lambda: C.UpsertUsersRequest(users=[C.User(user_id=f"u{n}") for n in range(11)]),
        "users has 11 entries; the limit is 10 per call",
    ),
    (
        "Catalog",
        "GetItems",
        lambda: C.GetItemsRequest(item_ids=[f"i{n}" for n in range(1_000_000)]),
        "item_ids has 1000000 entries; the limit is 10 per call",
    ),
    (
        "Catalog",
        "DeleteItems",
        lambda: C.DeleteItemsRequest(item_ids=[f"i{n}" for n in range(11)]),
        "item_ids has 11 entries; the limit is 10 per call",
    ),
    (
        "Catalog",
        "UpsertEdges",
        lambda: C.UpsertEdgesRequest(
            edges=[C.Edge(src_item_id="a", dst_item_id=f"b{n}", score=0.5) for n in range(11)]
        ),
        "edges has 11 entries; the limit is 10 per call",
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


# --- bytes that are no request -------------------------------------------------------------------------
SERVICES = [
    recommender_pb2.DESCRIPTOR.services_by_name["Recommender"],
    catalog_pb2.DESCRIPTOR.services_by_name["Catalog"],
]
METHODS = [(s.full_name, m) for s in SERVICES for m in s.methods]


def bad_utf8(message: Descriptor) -> bytes | None:
    """`message` on the wire with a string field (top level, or in the first message field that has
    one) holding bytes that are not UTF-8; None when it has no such field."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return _length_delimited(field.number, b"ok\xc3\x28")
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = bad_utf8(field.message_type)
            if inner is not None:
                return _length_delimited(field.number, inner)
    return None


def _length_delimited(number: int, payload: bytes) -> bytes:
    assert number < 16 and len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def rpc_count(method: str, code: str) -> float:
    """Calls of `method` answered `code`, as recd_rpc_latency_seconds counts them."""
    wanted = {"method": method, "code": code}
    samples = [s for m in metrics.RPC_LATENCY.collect() for s in m.samples]
    return sum(s.value for s in samples if s.name.endswith("_count") and s.labels == wanted)


async def counted(method: str, code: str, expected: float) -> None:
    # gRPC sends an aborted call's status before the handler's coroutine (and the interceptor timing
    # it) has finished, so the caller may see the answer a moment before the metric.
    for _ in range(100):
        if rpc_count(method, code) == expected:
            return
        await asyncio.sleep(0.01)
    assert rpc_count(method, code) == expected


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
async def test_undecodable_bytes_are_invalid_argument_counted_and_not_logged_as_errors(
    server_address: str, service: str, method: MethodDescriptor, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = {
        "corrupt": b"\xff\xff\xff\xff",  # a tag varint that never ends
        "truncated": b"\x0a\x05ab",  # a length-delimited field 5 bytes long, 2 sent
        "group": b"\x0b",  # start-group on field 1, never closed
    }
    utf8 = bad_utf8(method.input_type)
    if utf8 is not None:
        inputs["bad-utf8"] = utf8
    path = f"/{service}/{method.name}"
    caplog.set_level(logging.ERROR)
    async with grpc.aio.insecure_channel(server_address) as channel:
        for name, raw in inputs.items():
            before = rpc_count(method.name, "INVALID_ARGUMENT")
            call = (
                channel.unary_stream(path)(raw, timeout=10)
                if method.server_streaming
                else channel.unary_unary(path)(raw, timeout=10)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                if method.server_streaming:
                    async for _ in call:  # type: ignore[union-attr]
                        pass
                else:
                    await call  # type: ignore[misc]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())
            assert f"not a valid {method.input_type.full_name}" in (err.value.details() or ""), name
            if not method.server_streaming:  # the metrics interceptor times unary calls
                await counted(method.name, "INVALID_ARGUMENT", before + 1)
        await stub_ok(channel)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_metadata_over_the_limit_is_refused(server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.RecommendRequest(user_id="u", k=1)
        await stub.Recommend(request, metadata=[("x-note", "a" * 8_000)], timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recommend(request, metadata=[("x-note", "a" * 17_000)], timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await stub_ok(channel)


async def test_the_catalogue_refuses_attribute_names_past_its_limit() -> None:
    from server.api.server import RecdServer
    from server.wiring import build_recd

    config = make_config()
    config.server.limits.max_attribute_names = 4
    recd = build_recd(config)
    server = RecdServer(recd, config)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = catalog_pb2_grpc.CatalogStub(channel)
            first = [item(item_id="a", attributes={"lang": "en", "category": "c1", "brand": "b"})]
            await stub.UpsertItems(C.UpsertItemsRequest(items=first), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                more = [item(item_id="b", attributes={"lang": "de", "size": "m", "colour": "red"})]
                await stub.UpsertItems(C.UpsertItemsRequest(items=more), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "items add 2 new attribute names to the 3 the catalogue holds; the limit is 4" in (
                err.value.details() or ""
            )
            assert recd.items.attribute_name_count() == 3
            # Known names with new values, and one more name up to the limit, are still accepted.
            ok = [item(item_id="b", attributes={"lang": "de", "category": "c9", "size": "m"})]
            await stub.UpsertItems(C.UpsertItemsRequest(items=ok), timeout=10)
            assert recd.items.attribute_name_count() == 4
            found = await stub.GetItems(C.GetItemsRequest(item_ids=["b"]), timeout=10)
            assert dict(found.items[0].attributes) == {"lang": "de", "category": "c9", "size": "m"}
    finally:
        await server.stop()
