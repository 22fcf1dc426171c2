"""server/security/tls.py over real TLS on 127.0.0.1: a listener with and without client certificates,
wrong and expired certificates, rotation of the files under a running listener, the plaintext guard, and
the contexts handed to the backends' drivers."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from server.config import ClientTlsConfig, ConfigError, TlsConfig, load_config
from server.lifecycle import ServerLifecycle
from server.security.tls import (
    CertificateFiles,
    ClientFilesWatch,
    aio_channel,
    bolt_options,
    client_ssl_context,
    cql_options,
    is_local_address,
    redis_url_and_options,
)
from server.tools.certs import KeyPair, Pki

# A fresh connection per channel: gRPC otherwise shares one subchannel between channels to one target.
FRESH = [("grpc.use_local_subchannel_pool", 1)]


def listener_tls(pki: Pki, pair: KeyPair | None = None, *, require: bool = True) -> TlsConfig:
    pair = pair or pki.server
    return TlsConfig(
        enabled=True,
        cert_file=str(pair.cert),
        key_file=str(pair.key),
        client_ca_file=str(pki.ca) if require else "",
        require_client_cert=require,
    )


def client_tls(ca: Path, pair: KeyPair | None = None, server_name: str = "") -> ClientTlsConfig:
    return ClientTlsConfig(
        enabled=True,
        ca_file=str(ca),
        cert_file=str(pair.cert) if pair else "",
        key_file=str(pair.key) if pair else "",
        server_name=server_name,
    )


@contextlib.asynccontextmanager
async def health_only(tls: TlsConfig | None, address: str = "127.0.0.1:0") -> AsyncIterator[ServerLifecycle]:
    lifecycle = ServerLifecycle(address, lambda _: None, (), tls=tls)
    await lifecycle.start()
    try:
        yield lifecycle
    finally:
        await lifecycle.stop(None)


async def check(address: str, tls: ClientTlsConfig | None, channel: grpc.aio.Channel | None = None) -> None:
    """One Health.Check over a new connection (or over `channel`); raises AioRpcError when refused."""
    own = channel is None
    channel = channel or aio_channel(address, tls, FRESH)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        if own:
            await channel.close()


async def refused(address: str, tls: ClientTlsConfig | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await check(address, tls)
    return raised.value.code()


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.5:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/tmp/recd.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("frontend-0.recd:50051", False),
        (":50051", False),
    ],
)
def test_which_addresses_count_as_local(address: str, local: bool) -> None:
    assert is_local_address(address) is local


async def test_mutual_tls_round_trip(pki: Pki) -> None:
    async with health_only(listener_tls(pki)) as server:
        await check(server.address, client_tls(pki.ca, pki.client))
        # The name override: the certificate says localhost, and the dialled host is checked against it.
        await check(f"localhost:{server.port}", client_tls(pki.ca, pki.client))
        await check(server.address, client_tls(pki.ca, pki.client, server_name="localhost"))


async def test_a_client_trusting_another_ca_fails(pki: Pki) -> None:
    async with health_only(listener_tls(pki)) as server:
        assert (
            await refused(server.address, client_tls(pki.wrong_ca, pki.client)) == grpc.StatusCode.UNAVAILABLE
        )


async def test_a_name_the_certificate_does_not_carry_fails(pki: Pki) -> None:
    async with health_only(listener_tls(pki, require=False)) as server:
        tls = client_tls(pki.ca, server_name="someone-else.example")
        assert await refused(server.address, tls) == grpc.StatusCode.UNAVAILABLE


async def test_an_expired_server_certificate_fails(pki: Pki) -> None:
    async with health_only(listener_tls(pki, pki.expired_server)) as server:
        assert await refused(server.address, client_tls(pki.ca, pki.client)) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_without_a_certificate_is_refused_when_one_is_required(pki: Pki) -> None:
    async with health_only(listener_tls(pki)) as server:
        assert await refused(server.address, client_tls(pki.ca)) == grpc.StatusCode.UNAVAILABLE
        # A certificate from a CA the listener does not trust is no better than none.
        tls = client_tls(pki.ca, pki.wrong_client)
        assert await refused(server.address, tls) == grpc.StatusCode.UNAVAILABLE
        await check(server.address, client_tls(pki.ca, pki.client))


async def test_server_only_tls_serves_clients_without_a_certificate(pki: Pki) -> None:
    async with health_only(listener_tls(pki, require=False)) as server:
        await check(server.address, client_tls(pki.ca))
        assert await refused(server.address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext to TLS


async def test_rotation_new_connections_get_the_new_certificate(pki: Pki, tmp_path: Path) -> None:
    live = KeyPair(tmp_path / "server.pem", tmp_path / "server.key")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    shutil.copy(pki.ca, tmp_path / "clients.pem")
    tls = TlsConfig(
        enabled=True,
        cert_file=str(live.cert),
        key_file=str(live.key),
        client_ca_file=str(tmp_path / "clients.pem"),
        require_client_cert=True,
    )
    old, new = client_tls(pki.ca, pki.client), client_tls(pki.rotated_ca, pki.client)
    async with health_only(tls) as server:
        await check(server.address, old)
        assert await refused(server.address, new) == grpc.StatusCode.UNAVAILABLE
        kept = aio_channel(server.address, old, FRESH)
        try:
            await check(server.address, old, kept)
            # As a rotation tool does: each file written beside its target, then renamed over it (the
            # certificate first: for a moment the pair does not match, and the old one stays in use).
            for source, target in ((pki.rotated_server.cert, live.cert), (pki.rotated_server.key, live.key)):
                shutil.copy(source, f"{target}.new")
                os.replace(f"{target}.new", target)
            await check(server.address, new)
            assert await refused(server.address, old) == grpc.StatusCode.UNAVAILABLE
            # The connection opened before the rotation keeps the certificate it agreed on.
            await check(server.address, old, kept)
        finally:
            await kept.close()


def test_a_changed_pair_that_does_not_load_keeps_the_current_one(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    files = CertificateFiles(TlsConfig(enabled=True, cert_file=str(cert), key_file=str(key)), "test.tls")
    assert files.fetch() is None  # unchanged: nothing re-read

    shutil.copy(pki.rotated_server.cert, cert)  # a new certificate beside the old key
    assert files.fetch() is None and files.reloads == 0
    cert.write_text("not a certificate")
    assert files.fetch() is None and files.reloads == 0
    assert files.fetch() is None and reloads("refused") == 2  # counted once per change, not per connection

    shutil.copy(pki.rotated_server.cert, cert)
    shutil.copy(pki.rotated_server.key, key)
    assert files.fetch() is not None and files.reloads == 1
    assert files.fetch() is None and reloads("reloaded") == 1


def reloads(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "recd_tls_certificate_reloads_total", {"listener": "test.tls", "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("server", "client", "are not a PEM certificate and its key"),
        ("missing", "server", "server.tls.cert_file: cannot read"),
        ("server", "missing", "server.tls.key_file: cannot read"),
    ],
)
async def test_a_listener_does_not_start_without_a_usable_certificate(
    pki: Pki, cert: str, key: str, expected: str
) -> None:
    def path(name: str, suffix: str) -> str:
        pair = {"server": pki.server, "client": pki.client}.get(name)
        return str(getattr(pair, suffix)) if pair else "/nonexistent/file.pem"

    tls = TlsConfig(enabled=True, cert_file=path(cert, "cert"), key_file=path(key, "key"))
    with pytest.raises(ConfigError, match=expected):
        ServerLifecycle("127.0.0.1:0", lambda _: None, (), tls=tls)


async def test_plaintext_on_loopback_is_served_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async with health_only(None) as server:
        await check(server.address, None)
    assert any("PLAINTEXT gRPC on 127.0.0.1:" in r.getMessage() for r in caplog.records)


async def test_plaintext_on_every_interface_is_refused_unless_allowed() -> None:
    with pytest.raises(
        ConfigError, match=r"refusing plaintext gRPC on 0\.0\.0\.0:0.*server\.tls\.allow_plaintext"
    ):
        ServerLifecycle("0.0.0.0:0", lambda _: None, ())
    async with health_only(TlsConfig(allow_plaintext=True), "0.0.0.0:0") as server:
        await check(f"127.0.0.1:{server.port}", None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RECD_SERVER__TLS__ENABLED": "true"}, "server.tls.enabled needs server.tls.cert_file"),
        (
            {"RECD_CLUSTER__TLS__REQUIRE_CLIENT_CERT": "true"},
            "cluster.tls.require_client_cert needs cluster.tls.enabled and cluster.tls.client_ca_file",
        ),
        (
            {"RECD_EDGE__ORIGIN_TLS__ENABLED": "true", "RECD_EDGE__ORIGIN_TLS__CERT_FILE": "c.pem"},
            "edge.origin_tls.cert_file and edge.origin_tls.key_file go together",
        ),
        (
            {"RECD_CACHE__TLS__CA_FILE": "ca.pem"},
            "cache.tls names certificate files.*cache.tls.enabled is false",
        ),
    ],
)
def test_tls_config_mistakes_are_named(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(environ=env)


def test_driver_contexts_verify_the_server(pki: Pki) -> None:
    tls = client_tls(pki.ca, pki.client)
    context = client_ssl_context(tls, "profiles.tls")
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert client_ssl_context(ClientTlsConfig(), "profiles.tls") is None

    assert cql_options(ClientTlsConfig(), "profiles.tls") == {}
    named = cql_options(client_tls(pki.ca, server_name="scylla.internal"), "profiles.tls")
    assert named["ssl_options"] == {"server_hostname": "scylla.internal"}
    assert isinstance(bolt_options(tls, "graph.tls")["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigError, match=r"graph\.tls\.server_name is not supported"):
        bolt_options(client_tls(pki.ca, server_name="neo4j.internal"), "graph.tls")

    url, options = redis_url_and_options("redis://127.0.0.1:6379/0", tls, "cache.tls")
    assert url == "rediss://127.0.0.1:6379/0"
    assert options["ssl_ca_certs"] == str(pki.ca) and options["ssl_certfile"] == str(pki.client.cert)
    assert redis_url_and_options("redis://h:1/0", ClientTlsConfig(), "cache.tls") == ("redis://h:1/0", {})
    with pytest.raises(ConfigError, match=r"cache\.tls\.ca_file: ./nonexistent. is not a file"):
        redis_url_and_options(
            "redis://h:1/0", ClientTlsConfig(enabled=True, ca_file="/nonexistent"), "cache.tls"
        )


async def test_the_client_certificate_names_reach_the_handler(pki: Pki) -> None:
    """What the auth interceptor identifies a caller by (server/security/auth.py): the verified client
    certificate's names in the call's auth context."""

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b",".join(context.auth_context().get("x509_subject_alternative_name", []))

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(who)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Who", {"Am": handler}),))

    lifecycle = ServerLifecycle("127.0.0.1:0", register, (), tls=listener_tls(pki))
    await lifecycle.start()
    try:
        async with aio_channel(lifecycle.address, client_tls(pki.ca, pki.client), FRESH) as channel:
            assert await channel.unary_unary("/test.Who/Am")(b"", timeout=5) == b"recd-client"
    finally:
        await lifecycle.stop(None)


def test_client_files_watch_says_when_a_loadable_pair_replaced_the_files(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    shutil.copy(pki.client.cert, cert)
    shutil.copy(pki.client.key, key)
    watch = ClientFilesWatch(client_tls(pki.ca, KeyPair(cert, key)), "cluster.client_tls")
    assert not watch.changed()
    shutil.copy(pki.rotated_server.cert, cert)  # the certificate before its key: not yet
    assert not watch.changed()
    shutil.copy(pki.rotated_server.key, key)
    assert watch.changed()
    assert not watch.changed()  # said once per change
    key.unlink()
    assert not watch.changed()  # missing for a moment mid-rotation: nothing to act on
    assert (
        not ClientFilesWatch(None, "x").changed() and not ClientFilesWatch(ClientTlsConfig(), "x").changed()
    )


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["serve", "--single-process"], "server.tls"),
        (["serve", "--workers", "1"], "server.tls"),
        (["shard", "--address", "0.0.0.0:0"], "cluster.tls"),
    ],
)
def test_recd_refuses_a_plaintext_listener_at_once_saying_what_to_set(argv: list[str], key: str) -> None:
    env = {**os.environ, "RECD_SERVER__ADDRESS": "0.0.0.0:0", "RECD_SERVER__METRICS_ADDRESS": "127.0.0.1:0"}
    env["RECD_DATA_DIR"] = ""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "refusing plaintext gRPC on 0.0.0.0:" in done.stderr and f"{key}.allow_plaintext" in done.stderr
    assert "Traceback" not in done.stderr
