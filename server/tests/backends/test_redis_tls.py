"""RedisCache over TLS (cache.tls) against a real redis-server listening with --tls-port on 127.0.0.1,
started here (deploy/scripts/stack.sh starts a plaintext one): mutual TLS works, a client that trusts
another CA or brings no certificate gets nothing (the cache fails open: a miss, and its breaker counts)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.backends.redis_cache import RedisCache
from server.cluster.local import free_port
from server.config import CacheConfig, ClientTlsConfig
from server.tools.certs import Pki, make_pki

REDIS = shutil.which("redis-server")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("redis-pki"))


def _wait_tls(port: int, pki: Pki, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 20.0) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"redis-server does not serve TLS here: {log.read_text()[-500:]}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), 1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"redis-server not serving TLS on {port}: {log.read_text()[-500:]}")


@pytest.fixture(scope="module")
def redis_tls_port(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log = tmp_path_factory.mktemp("redis-tls") / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                REDIS,
                *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
                *("--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key)),
                *("--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_tls(port, pki, proc, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def cache(port: int, tls: ClientTlsConfig) -> RedisCache:
    # A generous timeout: the handshake is part of the first call on a shared 2-core box.
    return RedisCache(
        CacheConfig(backend="redis", url=f"redis://127.0.0.1:{port}/0", timeout_ms=2000.0, tls=tls)
    )


async def test_mutual_tls_round_trip(redis_tls_port: int, pki: Pki) -> None:
    tls = ClientTlsConfig(
        enabled=True, ca_file=str(pki.ca), cert_file=str(pki.client.cert), key_file=str(pki.client.key)
    )
    redis = cache(redis_tls_port, tls)
    try:
        await redis.set("tls-key", b"over tls", 30.0)
        assert await redis.get("tls-key") == b"over tls"
        assert await redis.get_many(["tls-key", "absent"]) == [b"over tls", None]
    finally:
        await redis.close()


@pytest.mark.parametrize("who", ["another CA", "no client certificate", "plaintext"])
async def test_a_client_that_cannot_verify_or_be_verified_gets_nothing(
    redis_tls_port: int, pki: Pki, who: str
) -> None:
    tls = {
        "another CA": ClientTlsConfig(
            enabled=True,
            ca_file=str(pki.wrong_ca),
            cert_file=str(pki.client.cert),
            key_file=str(pki.client.key),
        ),
        "no client certificate": ClientTlsConfig(enabled=True, ca_file=str(pki.ca)),
        "plaintext": ClientTlsConfig(),
    }[who]
    redis = cache(redis_tls_port, tls)
    try:
        for _ in range(5):  # the breaker's threshold (cache.breaker_failures)
            await redis.set("tls-key", b"x", 30.0)
        assert await redis.get("tls-key") is None
        assert redis.breaker_state == "open"
    finally:
        await redis.close()
