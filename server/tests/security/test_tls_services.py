"""recd's own servers and clients over mutual TLS on 127.0.0.1: the frontend's public API (RecdClient), a
shard node's Shard API called by a frontend (cluster.tls / cluster.client_tls), and the edge in front of
a frontend (edge.tls / edge.origin_tls)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from server.api.server import RecdServer
from server.client import RecdClient
from server.cluster.layout import layout_from_config, node_name
from server.cluster.local import free_port
from server.cluster.membership.manager import ClusterManager
from server.cluster.node.keeper import NodeLayoutKeeper
from server.config import ClientTlsConfig, Config
from server.domain import Interaction
from server.edge.origin import OriginError, OriginPool, RetryBudget
from server.edge.server import build_edge
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import ToyCatalogue, make_config
from server.tests.edge.fakes import edge_config
from server.tests.security.test_tls import client_tls, listener_tls
from server.tools.certs import Pki
from server.wiring import build_recd, build_shard_host
from shards.client import GrpcShardClient, ShardClient
from shards.host import ShardHost
from shards.records import ErrorKind, ShardError
from shards.service import ShardNodeServer, serve_node


@pytest.fixture
def tls_config(pki: Pki) -> Config:
    config = make_config()
    config.server.tls = listener_tls(pki)
    config.server.client_tls = client_tls(pki.ca, pki.client)
    return config


@pytest.fixture
async def frontend(tls_config: Config) -> AsyncIterator[RecdServer]:
    server = RecdServer(build_recd(tls_config), tls_config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def recommends_from_history(client: RecdClient, toy: ToyCatalogue) -> None:
    await load_toy(client, toy)
    history = cluster_items(toy, 3, 8)
    await client.record_interactions([Interaction("dora", i, "click", 1.0, 0) for i in history])
    answer = await client.recommend("dora", k=10)
    got = [toy.item_ids.index(i.item_id) for i in answer.items]
    assert len(got) == 10 and np.mean(toy.cluster_of[got] == 3) >= 0.8


async def test_frontend_round_trip_over_mutual_tls(
    frontend: RecdServer, tls_config: Config, toy: ToyCatalogue
) -> None:
    client = RecdClient(frontend.address, timeout_s=20.0, tls=tls_config.server.client_tls)
    try:
        await recommends_from_history(client, toy)
    finally:
        await client.close()


@pytest.mark.parametrize("who", ["plaintext", "no client certificate", "another CA's client certificate"])
async def test_frontend_refuses_clients_it_cannot_verify(
    frontend: RecdServer, tls_config: Config, pki: Pki, who: str
) -> None:
    tls = {
        "plaintext": None,
        "no client certificate": client_tls(pki.ca),
        "another CA's client certificate": client_tls(pki.ca, pki.wrong_client),
    }[who]
    client = RecdClient(frontend.address, timeout_s=5.0, tls=tls)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stats()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await client.close()


async def start_node(config: Config, address: str) -> tuple[ShardNodeServer, ShardHost]:
    """Node 0 of `config.cluster.nodes`, as `recd shard --node-id 0` serves it (in memory)."""
    layout = layout_from_config(config)
    name = node_name(0)
    host = await asyncio.to_thread(build_shard_host, config, list(layout.hosted(name)), None)
    keeper = NodeLayoutKeeper(name, host, None, layout)
    return await serve_node(host, address, layout=keeper, tls=config.cluster.tls), host


async def test_frontend_calls_a_shard_node_over_mutual_tls(
    tls_config: Config, pki: Pki, toy: ToyCatalogue
) -> None:
    config = dataclasses.replace(tls_config)
    address = f"127.0.0.1:{free_port()}"
    config.cluster = dataclasses.replace(
        config.cluster,
        nodes=[address],
        tls=listener_tls(pki),
        client_tls=client_tls(pki.ca, pki.client),
    )
    node, host = await start_node(config, address)
    try:
        # The node refuses a caller without a certificate, as the public listener does.
        stranger = GrpcShardClient(address, tls=client_tls(pki.ca))
        with pytest.raises(ShardError) as refused:
            await stranger.stats(timeout_s=5.0)
        assert refused.value.kind == ErrorKind.UNAVAILABLE
        await stranger.close()

        server = RecdServer(build_recd(config), config)
        await server.start()
        client = RecdClient(server.address, timeout_s=20.0, tls=config.server.client_tls)
        try:
            await recommends_from_history(client, toy)  # items were written to the node, searched there
            direct = GrpcShardClient(address, tls=config.cluster.client_tls)
            stats = await direct.stats(timeout_s=5.0)
            await direct.close()
            assert sum(s.items for s in stats.shards) == len(toy.item_ids)
        finally:
            await client.close()
            await server.stop()
    finally:
        await node.stop(0.5)
        await asyncio.to_thread(host.close)


async def test_edge_in_front_of_a_frontend_over_mutual_tls(
    frontend: RecdServer, tls_config: Config, pki: Pki, toy: ToyCatalogue
) -> None:
    edge = build_edge(
        edge_config(
            origins=[frontend.address],
            tls=listener_tls(pki),
            origin_tls=client_tls(pki.ca, pki.client),
        )
    )
    await edge.start()
    client = RecdClient(edge.address, timeout_s=20.0, tls=client_tls(pki.ca, pki.client))
    try:
        await recommends_from_history(client, toy)
        assert edge.cache.origin_calls >= 1
    finally:
        await client.close()
        await edge.stop()


def _replace(source: Path, target: Path) -> None:
    """As a rotation tool does: written beside the target, then renamed over it."""
    shutil.copy(source, f"{target}.new")
    os.replace(f"{target}.new", target)


async def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.05)


async def test_a_frontend_renews_its_client_certificate_without_a_restart(pki: Pki, tmp_path: Path) -> None:
    """The shard node comes to trust only a new CA's client certificates; the frontend's certificate
    files are replaced by one from that CA (the certificate renamed into place before its key); the
    frontend's node clients are remade with it and get through, while the old certificate no longer does."""
    cert, key, trusted = tmp_path / "client.pem", tmp_path / "client.key", tmp_path / "clients-ca.pem"
    for source, target in ((pki.client.cert, cert), (pki.client.key, key), (pki.ca, trusted)):
        shutil.copy(source, target)
    address = f"127.0.0.1:{free_port()}"
    config = make_config()
    config.cluster = dataclasses.replace(
        config.cluster,
        nodes=[address],
        tls=dataclasses.replace(listener_tls(pki), client_ca_file=str(trusted)),
        client_tls=ClientTlsConfig(enabled=True, ca_file=str(pki.ca), cert_file=str(cert), key_file=str(key)),
        resolve_interval_s=0.1,
        probe_interval_ms=50.0,
    )
    node, host = await start_node(config, address)
    manager = ClusterManager(config)
    try:
        await manager.ensure_started()

        def current() -> ShardClient:
            return manager.router.readable_replicas(0)[0][1]

        first = current()
        await first.stats(timeout_s=5.0)

        _replace(pki.rotated_ca, trusted)
        _replace(pki.rotated_server.cert, cert)
        _replace(pki.rotated_server.key, key)
        stale = GrpcShardClient(address, tls=client_tls(pki.ca, pki.client))
        with pytest.raises(ShardError):
            await stale.stats(timeout_s=5.0)
        await stale.close()

        await _eventually(lambda: current() is not first, "the frontend remade its node clients")
        stats = await current().stats(timeout_s=5.0)
        assert stats.dim == config.dim
    finally:
        await manager.close()
        await node.stop(0.5)
        await asyncio.to_thread(host.close)


async def test_the_edge_renews_its_client_certificate_without_a_restart(
    frontend: RecdServer, tls_config: Config, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    shutil.copy(pki.wrong_client.cert, cert)  # not trusted by the frontend: every call fails at first
    shutil.copy(pki.wrong_client.key, key)
    tls = ClientTlsConfig(enabled=True, ca_file=str(pki.ca), cert_file=str(cert), key_file=str(key))
    pool = OriginPool(
        [frontend.address],
        "round_robin",
        RetryBudget(0.1, 10.0),
        max_attempts=1,
        resolve_interval_s=0.1,
        tls=tls,
    )
    request = health_pb2.HealthCheckRequest().SerializeToString()
    await pool.start()
    try:
        with pytest.raises(OriginError):
            await pool.call("/grpc.health.v1.Health/Check", request, 5.0, retryable=False)
        _replace(pki.client.key, key)  # the key first, this time
        _replace(pki.client.cert, cert)
        before = pool.addresses and pool._backends[0]
        await _eventually(lambda: pool._backends[0] is not before, "the edge remade its origin channels")
        answer = await pool.call("/grpc.health.v1.Health/Check", request, 5.0, retryable=False)
        assert (
            health_pb2.HealthCheckResponse.FromString(answer).status == health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        await pool.close()
