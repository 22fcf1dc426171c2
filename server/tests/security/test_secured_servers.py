"""Auth on recd's real servers: every RPC of the frontend and of a shard node against a caller of each
role (allowed or PERMISSION_DENIED), missing and wrong credentials, open health checks, reflection, the
edge (its callers authenticated by it, its calls to the frontend made as itself), recd's own clients
sending their token, and callers identified by their client certificate over mutual TLS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from server.api.server import RecdServer
from server.client import RecdClient
from server.config import AuthConfig, CallerConfig, Config
from server.edge.server import build_edge
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.security import credentials
from server.security.credentials import authorized
from server.security.tls import aio_channel
from server.tests.api.test_end_to_end import load_toy
from server.tests.conftest import ToyCatalogue, make_config
from server.tests.edge.fakes import edge_config
from server.tests.security.callers import bearer, issue, stream_code, unary_code
from server.tests.security.test_auth import EXPECTED_ROLES
from server.tests.security.test_tls import client_tls, listener_tls
from server.tools.certs import Pki
from server.wiring import build_recd, build_shard_host
from shards.client import GrpcShardClient
from shards.service import ShardNodeServer, serve_node

ROLES = ("recommend", "feedback", "catalog", "admin", "internal")
STREAMS = {"/recd.v1.Catalog/WatchDeletes", "/recd.v1.Shard/Scan", "/recd.v1.Shard/Changes"}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def role_callers() -> tuple[dict[str, str], list[CallerConfig]]:
    """One caller per role, named after it."""
    tokens, callers = {}, []
    for role in ROLES:
        tokens[role], caller = issue(f"only-{role}", [role])
        callers.append(caller)
    return tokens, callers


@contextlib.contextmanager
def process_token(token: str | None) -> Iterator[None]:
    previous = credentials.process_token()
    credentials.use_token(token)
    try:
        yield
    finally:
        credentials.use_token(previous)


@pytest.fixture
def tokens_and_config() -> tuple[dict[str, str], Config]:
    tokens, callers = role_callers()
    config = make_config()
    config.auth = AuthConfig(enabled=True, callers=callers)
    return tokens, config


@pytest.fixture
async def frontend(tokens_and_config: tuple[dict[str, str], Config]) -> AsyncIterator[RecdServer]:
    _, config = tokens_and_config
    server = RecdServer(build_recd(config), config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def shard_node(tokens_and_config: tuple[dict[str, str], Config]) -> AsyncIterator[ShardNodeServer]:
    _, config = tokens_and_config
    host = build_shard_host(config)
    node = await serve_node(host, "127.0.0.1:0", auth=config.auth)
    try:
        yield node
    finally:
        await node.stop(None)
        host.close()


async def call_code(
    channel: grpc.aio.Channel, method: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    if method in STREAMS:
        return await stream_code(channel, method, metadata)
    return await unary_code(channel, method, metadata)


async def role_matrix(address: str, tokens: dict[str, str], service: str) -> list[str]:
    """Every (RPC, role) pair whose answer disagrees with EXPECTED_ROLES."""
    wrong = []
    async with grpc.aio.insecure_channel(address) as channel:
        for method, allowed in sorted(EXPECTED_ROLES.items()):
            if not method.startswith(f"/recd.v1.{service}"):
                continue
            for role in ROLES:
                code = await call_code(channel, method, bearer(tokens[role]))
                if role in allowed and code in AUTH_CODES:
                    wrong.append(f"{method} refused role {role}: {code.name}")
                if role not in allowed and code != grpc.StatusCode.PERMISSION_DENIED:
                    wrong.append(f"{method} let role {role} through: {code.name}")
    return wrong


async def test_every_public_rpc_admits_exactly_its_roles(
    frontend: RecdServer, tokens_and_config: tuple[dict[str, str], Config]
) -> None:
    tokens, _ = tokens_and_config
    assert await role_matrix(frontend.address, tokens, "Recommender") == []
    assert await role_matrix(frontend.address, tokens, "Catalog") == []


async def test_every_shard_rpc_admits_exactly_its_roles(
    shard_node: ShardNodeServer, tokens_and_config: tuple[dict[str, str], Config]
) -> None:
    tokens, _ = tokens_and_config
    assert await role_matrix(f"127.0.0.1:{shard_node.port}", tokens, "Shard") == []


async def test_missing_or_wrong_credentials_are_unauthenticated_on_every_rpc(
    frontend: RecdServer, tokens_and_config: tuple[dict[str, str], Config]
) -> None:
    tokens, _ = tokens_and_config
    stolen_id = tokens["admin"].split(".")[0] + ".guessed-secret"
    async with grpc.aio.insecure_channel(frontend.address) as channel:
        for method in sorted(m for m in EXPECTED_ROLES if not m.startswith("/recd.v1.Shard")):
            for metadata in ((), bearer(stolen_id), (("authorization", "Basic YWRtaW46YWRtaW4="),)):
                assert await call_code(channel, method, metadata) == grpc.StatusCode.UNAUTHENTICATED, method


async def test_health_is_open_and_kept_out_of_the_rpc_metrics(frontend: RecdServer) -> None:
    def checks() -> float:
        return (
            REGISTRY.get_sample_value("recd_rpc_latency_seconds_count", {"method": "Check", "code": "OK"})
            or 0.0
        )

    before = checks()
    async with grpc.aio.insecure_channel(frontend.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recd.v1.Recommender"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert checks() == before


async def list_services(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(metadata=metadata, timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        return [s.name for s in reply.list_services_response.service]


@pytest.mark.parametrize("mode", ["open", "authenticated", "off"])
async def test_reflection_is_as_configured(mode: str) -> None:
    tokens, callers = role_callers()
    config = make_config()
    config.auth = AuthConfig(enabled=True, callers=callers, reflection=mode)  # type: ignore[arg-type]
    server = RecdServer(build_recd(config), config)
    await server.start()
    try:
        anyone: list[str] | grpc.StatusCode
        try:
            anyone = await list_services(server.address)
        except grpc.aio.AioRpcError as exc:
            anyone = exc.code()
        if mode == "open":
            assert "recd.v1.Recommender" in anyone
        elif mode == "authenticated":
            assert anyone == grpc.StatusCode.UNAUTHENTICATED
            # Any known caller, whatever its roles.
            assert "recd.v1.Catalog" in await list_services(server.address, bearer(tokens["feedback"]))
        else:
            assert anyone == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop()


async def test_recds_own_clients_send_the_process_token(
    frontend: RecdServer, shard_node: ShardNodeServer, tokens_and_config: tuple[dict[str, str], Config]
) -> None:
    tokens, _ = tokens_and_config
    with process_token(tokens["recommend"]):
        client = RecdClient(frontend.address, timeout_s=10.0)
    try:
        assert (await client.recommend("nobody", k=3)).items is not None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stats()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await client.close()

    with process_token(tokens["internal"]):
        shard_client = GrpcShardClient(f"127.0.0.1:{shard_node.port}")
    try:
        assert (await shard_client.stats(5.0)) is not None
    finally:
        await shard_client.close()

    # No token set: the channel is gRPC's own, and the secured node refuses it.
    plain = GrpcShardClient(f"127.0.0.1:{shard_node.port}")
    try:
        with pytest.raises(Exception) as refused:
            await plain.stats(5.0)
        assert "UNAUTHENTICATED" in str(refused.value) or "credentials" in str(refused.value)
    finally:
        await plain.close()


async def test_the_edge_authenticates_its_callers_and_calls_origins_as_itself(toy: ToyCatalogue) -> None:
    app_token, app = issue("app", ["recommend"])
    loader_token, loader = issue("loader", ["catalog"])
    edge_token, edge_caller = issue("edge", ["recommend", "feedback", "catalog"])
    auth = AuthConfig(enabled=True, callers=[app, loader, edge_caller])
    config = make_config()
    config.auth = auth
    frontend = RecdServer(build_recd(config), config)
    await frontend.start()
    try:
        with process_token(edge_token):  # the edge process's own identity, for its origin calls
            edge = build_edge(edge_config(origins=[frontend.address]), auth=auth)
        await edge.start()
        try:
            with process_token(loader_token):
                loading = RecdClient(frontend.address, timeout_s=20.0)
            try:
                await load_toy(loading, toy)
            finally:
                await loading.close()

            async with authorized(grpc.aio.insecure_channel(edge.address), app_token) as as_app:
                stub = recommender_pb2_grpc.RecommenderStub(as_app)
                answer = await stub.Recommend(
                    recommender_pb2.RecommendRequest(user_id="ann", k=5), timeout=10
                )
                assert len(answer.items) == 5  # the frontend admitted the edge's own token
            async with grpc.aio.insecure_channel(edge.address) as anonymous:
                code = await unary_code(anonymous, "/recd.v1.Recommender/Recommend")
                assert code == grpc.StatusCode.UNAUTHENTICATED
                # The app's role is checked at the edge, not left to the frontend (where the edge has it).
                code = await unary_code(anonymous, "/recd.v1.Catalog/UpsertItems", bearer(app_token))
                assert code == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await edge.stop()
    finally:
        await frontend.stop()


async def test_callers_are_identified_by_their_client_certificate_over_mutual_tls(pki: Pki) -> None:
    token, ops = issue("ops", ["admin"])
    # The test PKI's client certificate: CN and DNS name "recd-client".
    web = CallerConfig(name="web", roles=["recommend"], cert_names=["recd-client"])
    config = make_config()
    config.server.tls = listener_tls(pki)
    config.auth = AuthConfig(enabled=True, callers=[web, ops])
    server = RecdServer(build_recd(config), config)
    await server.start()
    try:
        async with aio_channel(server.address, client_tls(pki.ca, pki.client)) as channel:
            assert await unary_code(channel, "/recd.v1.Recommender/Recommend", request=b"\n\x03ann") == (
                grpc.StatusCode.OK
            )
            assert await unary_code(channel, "/recd.v1.Catalog/Stats") == grpc.StatusCode.PERMISSION_DENIED
            # A token sent over the same connection decides who calls.
            assert await unary_code(channel, "/recd.v1.Catalog/Stats", bearer(token)) == grpc.StatusCode.OK
    finally:
        await server.stop()

    # The same certificate, but no caller names it: not authenticated.
    config.auth = AuthConfig(enabled=True, callers=[ops])
    server = RecdServer(build_recd(config), config)
    await server.start()
    try:
        async with aio_channel(server.address, client_tls(pki.ca, pki.client)) as channel:
            code = await unary_code(channel, "/recd.v1.Recommender/Recommend", request=b"\n\x03ann")
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop()
