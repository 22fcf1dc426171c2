"""One supervised process of a worker group: spawned, checked until ready, restarted with backoff after
it dies, stopped with SIGTERM (then SIGKILL past a deadline).

A child runs in a session of its own, so a Ctrl-C at the terminal reaches only the supervisor, which
stops the group in order (workers drain first). Its standard input is a pipe from the supervisor
(server/workers/control.py): commands go down it, and its end tells the child that the supervisor is
gone. Its stdout and stderr are the supervisor's: the group logs to one stream, each line tagged with
the process it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import ClientTlsConfig
from server.security.tls import aio_channel

log = logging.getLogger(__name__)

_POLL_S = 0.05


class ChildFailed(RuntimeError):
    """A child exited, or did not become ready in time, while it was being started."""


@dataclass
class ChildSpec:
    role: str  # worker, state_node, shard_node: the label of recd_worker_restarts_total
    name: str  # worker-0, state-node-graph, shard-node-1: what logs and group.json call it
    argv: Sequence[str]
    env: Mapping[str, str]
    # Readiness: health `health_service` SERVING at `health_target` (a gRPC target: host:port, unix:path).
    health_target: str
    health_service: str = ""
    # How the supervisor reaches `health_target`: the TLS its listener requires (None: plaintext).
    health_tls: ClientTlsConfig | None = None
    # Shown in group.json beside the pid (addresses, index).
    info: Mapping[str, Any] = field(default_factory=dict)


class Backoff:
    """Delay before restarting a child that died: `base_s`, doubled for each death in a row up to
    `max_s`; a child that had been up for `reset_after_s` starts over at `base_s`."""

    def __init__(self, base_s: float, max_s: float, reset_after_s: float) -> None:
        self._base_s = base_s
        self._max_s = max_s
        self._reset_after_s = reset_after_s
        self._deaths = 0

    def next_delay(self, up_for_s: float) -> float:
        if up_for_s >= self._reset_after_s:
            self._deaths = 0
        delay = min(self._max_s, self._base_s * 2.0**self._deaths)
        self._deaths += 1
        return delay


class Child:
    def __init__(self, spec: ChildSpec, backoff: Backoff) -> None:
        self.spec = spec
        self.backoff = backoff
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.restarts = 0
        self._started_at = 0.0
        self._exited_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def up_for_s(self) -> float:
        """How long it ran (until it exited, if it did; as far as the supervisor has noticed)."""
        if self._exited_at is None and self.exit_code() is not None:
            self._exited_at = time.monotonic()
        return (self._exited_at or time.monotonic()) - self._started_at

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        """None while it runs (or before it was started)."""
        return self.proc.poll() if self.proc is not None else None

    def spawn(self) -> None:
        self.ready = False
        self._exited_at = None
        self.proc = subprocess.Popen(
            list(self.spec.argv),
            env=dict(self.spec.env),
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        self._started_at = time.monotonic()
        log.info("%s started (pid %d)", self.spec.name, self.proc.pid)

    def send(self, command: str) -> bool:
        """One line down the child's pipe; False if it is gone."""
        if self.proc is None or self.proc.stdin is None or not self.alive():
            return False
        try:
            self.proc.stdin.write(f"{command}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    async def wait_ready(self, timeout_s: float, service: str | None = None) -> None:
        """Until the child's health (for `service`, by default its spec's readiness name) says SERVING;
        ChildFailed if it exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        name = self.spec.health_service if service is None else service
        # Short reconnect backoff: the first checks find nothing listening yet, and gRPC's default
        # backoff (1 s, growing) would leave a ready child unnoticed for seconds.
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
        async with aio_channel(self.spec.health_target, self.spec.health_tls, options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=name)
            while True:
                code = self.exit_code()
                if code is not None:
                    raise ChildFailed(f"{self.spec.name} exited with {code} before it was ready")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildFailed(f"{self.spec.name} was not ready within {timeout_s:.0f}s")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(request, timeout=min(1.0, left))
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self.ready = True
                        return
                await asyncio.sleep(min(_POLL_S * 4, max(0.0, left)))

    def signal(self, sig: int) -> None:
        if self.alive() and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> bool:
        """True once the child has exited; False if it still runs after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    def close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


async def stop_children(children: Sequence[Child], timeout_s: float) -> None:
    """SIGTERM to every child that runs, then SIGKILL to those still running after `timeout_s`."""
    running = [c for c in children if c.alive()]
    for child in running:
        child.signal(signal.SIGTERM)
    results = await asyncio.gather(*(c.wait_exit(timeout_s) for c in running))
    for child, exited in zip(running, results, strict=True):
        if not exited:
            log.warning("%s did not stop within %.0fs; killing it", child.spec.name, timeout_s)
            child.signal(signal.SIGKILL)
            await child.wait_exit(10.0)
    for child in children:
        child.close_pipe()
        child.ready = False
