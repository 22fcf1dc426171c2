"""Locust gRPC users for recd: the traffic of a storefront, aimed at the edge tier or at a frontend.

    locust -f loadtests/locustfile.py --headless --host 127.0.0.1:50052 -u 50 -r 10 --run-time 30s

Each user sends, with a think time between calls: ~90% Recommend (filters on a share of them),
~8% RecordInteractions, ~2% SimilarItems, for users drawn Zipf from the demo dataset's users (the same
workload model as `recd bench edge`, server/tools/bench/edge.py). Every RPC is reported to Locust as a request
event (name, response time, answer size, exception), so Locust's statistics are per RPC.

Environment (not RECD_*: a RECD_ variable is configuration to recd's own processes):
  LOADTEST_SCENARIO  warm (default): Zipf users, repeatable requests, so an edge serves most from cache;
                     cold: users drawn uniformly and a per-request session context, so no answer is ever
                     reused (an edge passes every Recommend to its origin).
  LOADTEST_DATASET   the dataset whose users.parquet and manifest.json to read (default data/demo/dataset);
                     missing: ids u00000.. and i000000.. of the demo's shape are used.
  LOADTEST_THINK_MS  mean pause between a user's calls (default 100; uniform over 0..2x).
  LOADTEST_TIMEOUT_S the deadline of each RPC (default 2).
  LOADTEST_FINAL_JSON where to write the final per-RPC figures when Locust quits (loadtests/run.py reads
                     them: Locust's _stats.csv is rewritten once a second and can miss the last second).
  LOADTEST_TLS_CA    a CA bundle (PEM): call the target over TLS, verifying it against this bundle;
  LOADTEST_TLS_CERT, LOADTEST_TLS_KEY  with it, a client certificate and key (mutual TLS);
  LOADTEST_TLS_SERVER_NAME  the name to check the target's certificate against (default: its host).
"""

from __future__ import annotations

# gRPC must cooperate with gevent, Locust's concurrency, before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from server.client import allowed_values  # noqa: E402
from server.config import ClientTlsConfig  # noqa: E402
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc  # noqa: E402
from server.security.tls import sync_channel  # noqa: E402
from server.tools.bench.edge import FILTER_SHARE, FILTERS, MIX, ZipfUsers, user_ids  # noqa: E402

SCENARIO = os.environ.get("LOADTEST_SCENARIO", "warm")
if SCENARIO not in ("warm", "cold"):
    raise SystemExit(f"LOADTEST_SCENARIO must be warm or cold, got {SCENARIO!r}")
DATASET = Path(os.environ.get("LOADTEST_DATASET", "data/demo/dataset"))
THINK_S = float(os.environ.get("LOADTEST_THINK_MS", "100")) / 1000.0
TIMEOUT_S = float(os.environ.get("LOADTEST_TIMEOUT_S", "2"))
ACTIONS = ("view", "click", "purchase")


def _item_count() -> int:
    manifest = DATASET / "manifest.json"
    return int(json.loads(manifest.read_text())["items"]) if manifest.exists() else 200_000


USERS = user_ids(DATASET)
ZIPF = ZipfUsers(USERS)
ITEMS = _item_count()
# Locust runs all users of a process in one thread (gevent), so one generator serves them all.
RNG = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
TLS = ClientTlsConfig(
    enabled=bool(os.environ.get("LOADTEST_TLS_CA")),
    ca_file=os.environ.get("LOADTEST_TLS_CA", ""),
    cert_file=os.environ.get("LOADTEST_TLS_CERT", ""),
    key_file=os.environ.get("LOADTEST_TLS_KEY", ""),
    server_name=os.environ.get("LOADTEST_TLS_SERVER_NAME", ""),
)


def grpc_target(host: str) -> str:
    """Locust's --host as a gRPC target: host:port, with an optional grpc:// or http:// in front."""
    for scheme in ("grpc://", "http://"):
        if host.startswith(scheme):
            return host[len(scheme) :]
    return host


class RecdUser(User):
    wait_time = between(0.0, 2 * THINK_S)

    def on_start(self) -> None:
        if not self.host:
            raise SystemExit("give the target with --host HOST:PORT (the edge or a frontend)")
        self.channel = sync_channel(grpc_target(self.host), TLS, where="LOADTEST_TLS_*")
        self.stub = recommender_pb2_grpc.RecommenderStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, method: Callable[..., Any], request: Any) -> None:
        started = time.perf_counter()
        exception: BaseException | None = None
        length = 0
        try:
            response = method(request, timeout=TIMEOUT_S)
            length = response.ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )

    def _user(self) -> str:
        return ZIPF.draw() if SCENARIO == "warm" else USERS[int(RNG.integers(len(USERS)))]

    def _item(self) -> str:
        return f"i{int(RNG.integers(ITEMS)):06d}"

    @task(round(MIX["Recommend"] * 100))
    def recommend(self) -> None:
        filter_ = FILTERS[int(RNG.integers(len(FILTERS)))] if RNG.random() < FILTER_SHARE else {}
        context = {"session": uuid.uuid4().hex} if SCENARIO == "cold" else {}
        request = recommender_pb2.RecommendRequest(
            user_id=self._user(), k=10, filter=allowed_values(filter_), context=context
        )
        self._call("Recommend", self.stub.Recommend, request)

    @task(round(MIX["RecordInteractions"] * 100))
    def record_interactions(self) -> None:
        user = self._user()
        request = recommender_pb2.RecordInteractionsRequest(
            interactions=[
                recommender_pb2.Interaction(user_id=user, item_id=self._item(), action=random.choice(ACTIONS))
                for _ in range(int(RNG.integers(1, 4)))
            ]
        )
        self._call("RecordInteractions", self.stub.RecordInteractions, request)

    @task(round(MIX["SimilarItems"] * 100))
    def similar_items(self) -> None:
        request = recommender_pb2.SimilarItemsRequest(item_id=self._item(), k=10)
        self._call("SimilarItems", self.stub.SimilarItems, request)


_ENVIRONMENT: list[Environment] = []


@events.init.add_listener
def remember_environment(environment: Environment, **_: Any) -> None:
    _ENVIRONMENT.append(environment)


@events.quit.add_listener
def write_final_stats(**_: Any) -> None:
    path = os.environ.get("LOADTEST_FINAL_JSON")
    if not path or not _ENVIRONMENT:
        return
    environment = _ENVIRONMENT[0]
    entries = [*sorted(environment.stats.entries.values(), key=lambda e: e.name), environment.stats.total]
    rows = [
        {
            "rpc": "all" if entry is environment.stats.total else entry.name,
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "rps": entry.total_rps,
            "p50_ms": entry.get_response_time_percentile(0.50),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": entry.max_response_time,
        }
        for entry in entries
    ]
    Path(path).write_text(json.dumps(rows, indent=2) + "\n")
