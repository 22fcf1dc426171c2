"""Runs `recd serve` (or the demo loader) as a child process on free loopback ports, for benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import ClientTlsConfig
from server.security.tls import sync_channel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(
    address: str, timeout_s: float, proc: subprocess.Popen[bytes], tls: ClientTlsConfig | None = None
) -> None:
    """`tls`: how the server is reached (its server.client_tls; None: plaintext)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"recd exited with {proc.returncode} before serving")
        try:
            with sync_channel(address, tls) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"recd did not serve on {address} within {timeout_s}s")


@contextmanager
def recd_server(
    env_overrides: dict[str, str],
    timeout_s: float = 600.0,
    config: str | None = None,
    workers: int = 0,
    tls: ClientTlsConfig | None = None,
) -> Iterator[tuple[str, str, int]]:
    """Yields (grpc address, metrics address, pid) of a `recd serve` child; stops it (SIGTERM) afterwards.
    `workers`: 0 (the default, what the benchmarks measure) runs it as one process, N a worker group
    (the pid is then its supervisor's). `tls`: how to reach it, when the overrides turn server.tls on."""
    address = f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "RECD_SERVER__ADDRESS": address,
        "RECD_SERVER__METRICS_ADDRESS": metrics,
        "RECD_SERVER__LOG_LEVEL": "WARNING",
        **env_overrides,
    }
    args = [sys.executable, "-m", "server.cli", "serve", "--workers", str(workers)]
    args += ["--config", config] if config else []
    proc = subprocess.Popen(args, env=env)
    try:
        wait_serving(address, timeout_s, proc, tls)
        yield address, metrics, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape(metrics_address: str) -> dict[str, float]:
    """Prometheus text exposition as {series: value}."""
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out
