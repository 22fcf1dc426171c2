"""`recd bench tls`: what security costs. Three `recd serve` processes on the demo snapshot, one in
plaintext, one with server.tls (client certificates required, throwaway certificates from
server/tools/certs.py) and one with mutual TLS plus bearer-token authentication, roles and the admission
interceptor (server/security), run at once and are measured in alternating phases the same way: Recommend in a
closed loop (QPS, p50, p99, server CPU per request), the empty RPC (a health check) beside it, and new
connections (one health check each over a fresh channel: the handshake's latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import ClientTlsConfig
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.security.auth import hash_token, new_token
from server.security.tls import aio_channel
from server.tools.bench.loadgen import LoadResult, closed_loop
from server.tools.bench.recommend import CONCURRENCY, ensure_demo_state, user_ids, zipf_order
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server, scrape
from server.tools.certs import make_pki

CPU = "process_cpu_seconds_total"


async def _connections(address: str, tls: ClientTlsConfig | None, count: int) -> np.ndarray:
    """Seconds from a new channel to the answer of its first call, `count` times one after another."""
    fresh = [("grpc.use_local_subchannel_pool", 1)]
    took = []
    for _ in range(count):
        started = time.perf_counter()
        async with aio_channel(address, tls, fresh) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        took.append(time.perf_counter() - started)
    return np.asarray(took)


@dataclass
class _Mode:
    name: str
    key: str
    tls: ClientTlsConfig | None
    token: str | None = None
    address: str = ""
    metrics_address: str = ""
    recommend: list[LoadResult] = field(default_factory=list)
    empty: list[LoadResult] = field(default_factory=list)
    recommend_cpu_s: float = 0.0
    empty_cpu_s: float = 0.0
    connect_s: list[float] = field(default_factory=list)


def run_tls_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    root = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(root, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    users = user_ids(root)
    order = zipf_order(len(users), 1_000_000)
    rounds, phase_s = (2, 3.0) if quick else (4, 5.0)
    connections = 25 if quick else 100  # per round

    def recommend_as(token: str | None):  # type: ignore[no-untyped-def]
        metadata = (("authorization", f"Bearer {token}"),) if token else None

        async def recommend(channel, i):  # type: ignore[no-untyped-def]
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            user = users[int(order[i % len(order)])]
            request = recommender_pb2.RecommendRequest(user_id=user, k=10)
            return await stub.Recommend(request, timeout=2, metadata=metadata)

        return recommend

    async def empty(channel, i):  # type: ignore[no-untyped-def]
        return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)

    with (
        tempfile.TemporaryDirectory(prefix="recd-bench-tls-") as directory,
        contextlib.ExitStack() as servers,
    ):
        pki = make_pki(Path(directory))
        listener = {
            "RECD_SERVER__TLS__ENABLED": "true",
            "RECD_SERVER__TLS__CERT_FILE": str(pki.server.cert),
            "RECD_SERVER__TLS__KEY_FILE": str(pki.server.key),
            "RECD_SERVER__TLS__CLIENT_CA_FILE": str(pki.ca),
            "RECD_SERVER__TLS__REQUIRE_CLIENT_CERT": "true",
        }
        client = ClientTlsConfig(
            enabled=True, ca_file=str(pki.ca), cert_file=str(pki.client.cert), key_file=str(pki.client.key)
        )
        token = new_token()
        callers = Path(directory) / "callers.yaml"
        callers.write_text(
            yaml.safe_dump(
                [{"name": "bench", "roles": ["recommend"], "token_hashes": [str(hash_token(token))]}]
            )
        )
        secured = {**listener, "RECD_AUTH__ENABLED": "true", "RECD_AUTH__CALLERS_FILE": str(callers)}
        modes = [
            _Mode("plaintext", "plain", None),
            _Mode("mutual TLS", "tls", client),
            _Mode("mutual TLS + token", "auth", client, token),
        ]
        # Both servers run at once and the phases alternate between them, so load from elsewhere on a
        # shared machine falls on both modes alike; each server's own CPU counter is its cost.
        for mode, env in zip(modes, ({}, listener, secured), strict=True):
            overrides = {"RECD_DATA_DIR": str(root / "state"), **env}
            mode.address, mode.metrics_address, _ = servers.enter_context(
                recd_server(overrides, tls=mode.tls)
            )
        for _ in range(rounds):
            for mode in modes:
                before = scrape(mode.metrics_address)[CPU]
                mode.recommend.append(
                    asyncio.run(
                        closed_loop(
                            recommend_as(mode.token), mode.address, CONCURRENCY, phase_s, tls=mode.tls
                        )
                    )
                )
                middle = scrape(mode.metrics_address)[CPU]
                mode.empty.append(
                    asyncio.run(closed_loop(empty, mode.address, CONCURRENCY, phase_s, tls=mode.tls))
                )
                mode.recommend_cpu_s += middle - before
                mode.empty_cpu_s += scrape(mode.metrics_address)[CPU] - middle
                mode.connect_s += list(asyncio.run(_connections(mode.address, mode.tls, connections)))

    result: dict[str, float] = {}
    rows: list[list[object]] = []
    for mode in modes:
        rec, base = LoadResult.merged(mode.recommend), LoadResult.merged(mode.empty)
        # The warm-up second of each phase is in the CPU counter, not in the requests: slightly high.
        rec_cpu_ms = mode.recommend_cpu_s / max(1, rec.requests) * 1e3
        base_cpu_ms = mode.empty_cpu_s / max(1, base.requests) * 1e3
        connect = np.asarray(mode.connect_s) * 1e3
        key = mode.key
        result |= {
            f"{key}_recommend_qps": rec.qps,
            f"{key}_recommend_p50_ms": rec.percentile_ms(50),
            f"{key}_recommend_p99_ms": rec.percentile_ms(99),
            f"{key}_recommend_cpu_ms": rec_cpu_ms,
            f"{key}_empty_qps": base.qps,
            f"{key}_empty_p99_ms": base.percentile_ms(99),
            f"{key}_empty_cpu_ms": base_cpu_ms,
            f"{key}_connect_p50_ms": float(np.percentile(connect, 50)),
            f"{key}_connect_p99_ms": float(np.percentile(connect, 99)),
            f"{key}_errors": float(rec.errors + base.errors),
        }
        rows.append(
            [f"Recommend k=10, {mode.name}", rec.qps, rec.percentile_ms(50), rec.percentile_ms(99), rec.errors,
             f"{rec_cpu_ms:.2f}"]
        )  # fmt: skip
        rows.append(
            [f"empty RPC, {mode.name}", base.qps, base.percentile_ms(50), base.percentile_ms(99), base.errors,
             f"{base_cpu_ms:.2f}"]
        )  # fmt: skip
        rows.append(
            [f"new connection + 1 empty RPC, {mode.name}", "", result[f"{key}_connect_p50_ms"],
             result[f"{key}_connect_p99_ms"], 0, ""]
        )  # fmt: skip
    qps_ratio = result["tls_recommend_qps"] / result["plain_recommend_qps"]
    cpu_ratio = result["tls_recommend_cpu_ms"] / result["plain_recommend_cpu_ms"]
    auth_qps = result["auth_recommend_qps"] / result["plain_recommend_qps"]
    auth_cpu = result["auth_recommend_cpu_ms"] / result["plain_recommend_cpu_ms"]
    result |= {
        "recommend_qps_ratio": qps_ratio,
        "recommend_cpu_ratio": cpu_ratio,
        "auth_recommend_qps_ratio": auth_qps,
        "auth_recommend_cpu_ratio": auth_cpu,
    }
    body = table(["RPC", "QPS", "p50 ms", "p99 ms", "errors", "server CPU ms / request"], rows)
    body += (
        f"\n\nOver mutual TLS / plaintext: Recommend QPS **{qps_ratio:.2f}**, server CPU per Recommend"
        f" **{cpu_ratio:.2f}**; mutual TLS with a bearer token checked on every call (roles, quota bucket,"
        f" the admission interceptor) / plaintext: QPS **{auth_qps:.2f}**, CPU **{auth_cpu:.2f}**. The servers"
        " (`recd serve` as one process each, on the demo snapshot) run at"
        f" once and the phases alternate between them, {rounds} rounds of {phase_s:.0f} s Recommend then"
        f" {phase_s:.0f} s empty RPC per mode (each after 1 s of warm-up), so other load on the machine falls on"
        f" all alike; server CPU comes from each server's own counter (the steadier figure on a shared"
        f" machine: the client runs on the same cores, and its TLS work too). Closed loop, {CONCURRENCY}"
        " concurrent callers over one connection from one grpc.aio client process, Zipf-distributed users of"
        f" the demo dataset ({len(users):,} users). New connections: {connections} in a row per round, each a"
        " fresh channel (its own subchannel) making one health check: TCP, and with TLS the handshake (ECDSA"
        " P-256 certificates, both sides verified). The token is scrypt-checked once, then remembered by the"
        f" server (server/security/auth.py). Machine: {os.cpu_count()} cores."
    )
    return body, result
