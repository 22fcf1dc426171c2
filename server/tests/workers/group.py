"""A `recd serve --workers N` group as a real process tree for tests, and what tests ask of it.

Every process listens on 127.0.0.1; every wait is bounded; `close()` leaves nothing running whatever
happened (SIGTERM to the supervisor, then SIGKILL to every pid group.json ever named).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.cluster.local import _merge as merge_config
from server.cluster.local import free_port
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.tools.bench.serverproc import scrape

DIM = 16
ROOT = Path(__file__).resolve().parents[3]

# What callers rely on to ride through a worker's death (README, "Worker group"): gRPC's own
# mechanisms, no retry loop of ours. waitForReady: a call made while the channel has no connection
# waits for one (to another worker) instead of failing. Transparent retry (always on): a call that
# never reached a worker's application is sent again. retryPolicy on UNAVAILABLE, for Recommend only
# (a read, safe to repeat): a call in flight on the connection of the worker that died.
RECOMMEND_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "recd.v1.Recommender", "method": "Recommend"}],
                "waitForReady": True,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def group_config() -> dict[str, Any]:
    # Generous budgets: timing is not under test, a 2-core box runs ~6 processes of the group.
    steps = {name: {"budget_ms": 3000.0} for name in ("hydrate_user", "candidates", "ann", "graph", "rank")}
    return {
        "dim": DIM,
        "ranking": {"ranker": "cpu"},
        "pipeline": {"budget_ms": 5000.0, "steps": steps},
        "shards": {"count": 20, "index": {"initial_capacity": 1024, "ef_search": 64}},
        "server": {"log_format": "text", "log_level": "INFO", "grace_s": 2.0},
        "workers": {"restart_backoff_s": 0.2, "start_timeout_s": 120.0, "stop_timeout_s": 30.0},
    }


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Group:
    def __init__(
        self, root: Path, data_dir: Path, workers: int, config: dict[str, Any] | None = None
    ) -> None:
        """`config`: merged over group_config() (TLS sections, say)."""
        self.root = root
        self.extra_config = config or {}
        self.data_dir = data_dir
        self.workers = workers
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics_address = f"127.0.0.1:{free_port()}"
        # Short: the state node's socket lives here (unix socket paths are at most 107 bytes).
        self.run_dir = Path(tempfile.mkdtemp(prefix="rg-"))
        self.config_path = root / "group.yaml"
        self.log_path = root / "group.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._pids: set[int] = set()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RECD_DATA_DIR": str(self.data_dir),
            "RECD_SERVER__ADDRESS": self.address,
            "RECD_SERVER__METRICS_ADDRESS": self.metrics_address,
            "RECD_WORKERS__RUN_DIR": str(self.run_dir),
        }

    def start(self, timeout_s: float = 180.0) -> Group:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(merge_config(group_config(), self.extra_config)))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "server.cli", "serve"),
                    *("--workers", str(self.workers), "--config", str(self.config_path)),
                ],
                env=self.env(),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait(lambda s: s["serving"], timeout_s, "the group to serve")
        return self

    # --- state ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        path = self.run_dir / "group.json"
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {"serving": False, "workers": [], "shard_nodes": [], "state_nodes": []}
        self._pids |= set(self.pids(state))
        return state

    @staticmethod
    def pids(state: dict[str, Any]) -> list[int]:
        children = [*state["workers"], *state["shard_nodes"], *state["state_nodes"]]
        return [c["pid"] for c in children if c and c.get("pid")]

    def wait(self, ready: Any, timeout_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the supervisor exited with {self.proc.returncode}:\n{self.log_tail()}")
            state = self.state()
            if ready(state):
                return state
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout_s}s for {what}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_address)

    def recommends_by_worker(self) -> dict[str, float]:
        """Recommend calls each worker has answered, from the group's one metrics page."""
        out: dict[str, float] = {}
        for series, value in self.metrics().items():
            if series.startswith("recd_rpc_latency_seconds_count{") and 'method="Recommend"' in series:
                worker = series.split('worker="', 1)[1].split('"', 1)[0]
                out[worker] = out.get(worker, 0.0) + value
        return out

    def public_health(self) -> int:
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)

    # --- stopping -----------------------------------------------------------------------------------------
    def kill_child(self, pid: int, sig: int = signal.SIGKILL) -> None:
        assert pid in self._pids, f"{pid} is not a process of this group"
        os.kill(pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 90.0) -> int:
        """Signals the supervisor and waits for it; its exit code."""
        assert self.proc is not None
        self.state()
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 15
        for pid in self._pids:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def prepare_demo_state(root: Path, items: int, users: int, timeout_s: float = 300.0) -> Path:
    """`recd demo` on a small generated dataset, exiting once loaded: its state directory (the layout a
    single process and a group share: shards/, profiles/, graph/) and dataset."""
    config_path = root / "demo.yaml"
    config_path.write_text(yaml.safe_dump(group_config()))
    env = {
        **os.environ,
        "RECD_SERVER__ADDRESS": f"127.0.0.1:{free_port()}",
        "RECD_SERVER__METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "RECD_SERVER__LOG_LEVEL": "WARNING",
    }
    args = ["demo", "--dir", str(root / "demo"), "--items", str(items), "--users", str(users)]
    subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--exit-after", "0", "--config", str(config_path)],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=timeout_s,
        stdout=subprocess.DEVNULL,
    )
    return root / "demo"


def recommend_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.service_config", RECOMMEND_SERVICE_CONFIG)])


async def recommend_once(address: str, user_id: str, k: int = 10) -> list[str]:
    """One Recommend over a channel of its own (a fresh connection, so any worker may take it)."""
    async with recommend_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        reply = await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=k), timeout=20)
    return [item.item_id for item in reply.items]


async def until_every_worker_answers(
    group: Group, user_id: str, workers: int, max_channels: int = 64
) -> list[list[str]]:
    """Recommends over fresh channels until every worker has answered at least one of them (the kernel
    hands each new connection to one of the listening workers); the answers."""
    before = group.recommends_by_worker()
    answers = []
    for n in range(1, max_channels + 1):
        answers.append(await recommend_once(group.address, user_id))
        if n % 4 == 0:
            after = await asyncio.to_thread(group.recommends_by_worker)
            grew = {w for w, v in after.items() if v > before.get(w, 0.0)}
            if len(grew) == workers:
                return answers
    raise AssertionError(f"{max_channels} fresh channels did not reach all {workers} workers")
