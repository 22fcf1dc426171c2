"""`recd cluster up|down`: a frontend and N shard nodes as processes on 127.0.0.1, for tests and benchmarks.

Everything lives under one directory (default data/cluster): the generated config, the nodes' data, one
log per process, and a state file with pids and addresses that `down` (or another process) reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.cluster import pids as procs
from server.config import ClientTlsConfig, load_config
from server.security.tls import sync_channel

STATE_FILE = "cluster.json"
CONFIG_FILE = "cluster.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    address: str,
    proc: subprocess.Popen[bytes] | None,
    timeout_s: float,
    log: Path | None,
    tls: ClientTlsConfig | None = None,
) -> None:
    """`tls`: how the process is reached (its listener's TLS; None: plaintext)."""
    deadline = time.monotonic() + timeout_s
    with sync_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"process for {address} exited with {proc.returncode}:\n{tail}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"nothing serving on {address} within {timeout_s}s")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@dataclass
class ProcessInfo:
    pid: int
    address: str
    log: str
    started: int = 0  # the process's start time (pids.start_time): a reused pid is not ours
    metrics: str = ""  # its /metrics address, if it serves one


@dataclass
class ClusterState:
    root: str
    config: str
    frontend: ProcessInfo | None = None
    metrics_address: str = ""
    nodes: dict[str, ProcessInfo] = field(default_factory=dict)  # node id (as str: JSON keys) -> process
    more_frontends: dict[str, ProcessInfo] = field(default_factory=dict)  # key -> process

    def save(self) -> None:
        path = Path(self.root) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> ClusterState:
        raw = json.loads((root / STATE_FILE).read_text())
        frontend = ProcessInfo(**raw["frontend"]) if raw.get("frontend") else None
        nodes = {k: ProcessInfo(**v) for k, v in raw.get("nodes", {}).items()}
        more = {k: ProcessInfo(**v) for k, v in raw.get("more_frontends", {}).items()}
        return cls(raw["root"], raw["config"], frontend, raw.get("metrics_address", ""), nodes, more)


class LocalCluster:
    """Starts and stops the processes; `kill_node`/`start_node` let tests fail and restore one node."""

    def __init__(
        self,
        root: Path,
        nodes: int,
        replication: int = 0,
        config: dict[str, Any] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root).resolve()
        self.node_count = nodes
        self.replication = replication
        self.python = python
        self.node_ports = {i: free_port() for i in range(nodes)}
        self.node_metrics_ports: dict[int, int] = {}
        self.frontend_address = f"127.0.0.1:{free_port()}"
        self.metrics_address = f"127.0.0.1:{free_port()}"
        self.config_path = self.root / CONFIG_FILE
        self._extra = config or {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.state = ClusterState(str(self.root), str(self.config_path), metrics_address=self.metrics_address)

    # --- config ---------------------------------------------------------------------------------------
    def node_address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.node_ports[node_id]}"

    def node_metrics_address(self, node_id: int) -> str:
        if node_id not in self.node_metrics_ports:
            self.node_metrics_ports[node_id] = free_port()
        return f"127.0.0.1:{self.node_metrics_ports[node_id]}"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        base: dict[str, Any] = {
            "data_dir": str(self.root / "data"),
            "server": {
                "address": self.frontend_address,
                "metrics_address": self.metrics_address,
                "log_format": "text",
                "log_level": "WARNING",
            },
            "cluster": {
                "nodes": [f"{i}={self.node_address(i)}" for i in range(self.node_count)],
                "replication": self.replication,
            },
        }
        self.config_path.write_text(yaml.safe_dump(_merge(base, self._extra), sort_keys=False))
        return self.config_path

    def client_tls(self) -> tuple[ClientTlsConfig, ClientTlsConfig]:
        """(server.client_tls, cluster.client_tls) of the written config: how its frontends and its
        nodes are reached."""
        config = load_config(self.config_path, environ={})
        return config.server.client_tls, config.cluster.client_tls

    # --- processes ------------------------------------------------------------------------------------
    def _spawn(self, key: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.root / "logs" / f"{key}.log"
        with open(log, "ab") as out:
            # Own session: `recd cluster up` returns while they keep running; a Ctrl-C there is not theirs.
            proc = subprocess.Popen(
                [self.python, "-m", "server.cli", *args, "--config", str(self.config_path)],
                env={**os.environ, **env} if env else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        self._procs[key] = proc
        return proc

    def start_node(self, node_id: int, wait: bool = True) -> subprocess.Popen[bytes]:
        """Node ids past the configured ones start empty, ready to be added by a rebalance."""
        if node_id not in self.node_ports:
            self.node_ports[node_id] = free_port()
        address = self.node_address(node_id)
        metrics = self.node_metrics_address(node_id)
        args = ["shard", "--node-id", str(node_id), "--address", address, "--metrics-address", metrics]
        proc = self._spawn(f"node-{node_id}", args)
        self.state.nodes[str(node_id)] = ProcessInfo(
            proc.pid, address, str(self.root / "logs" / f"node-{node_id}.log"), _started(proc.pid), metrics
        )
        self.state.save()
        if wait:
            self.wait_node(node_id)
        return proc

    def wait_node(self, node_id: int, timeout_s: float = 60.0) -> None:
        wait_healthy(
            self.node_address(node_id),
            self._procs.get(f"node-{node_id}"),
            timeout_s,
            self.root / "logs" / f"node-{node_id}.log",
            self.client_tls()[1],
        )

    def start_frontend(self, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
        proc = self._spawn("frontend", ["serve", "--single-process"])
        self.state.frontend = ProcessInfo(
            proc.pid, self.frontend_address, str(self.root / "logs" / "frontend.log"), _started(proc.pid)
        )
        self.state.save()
        wait_healthy(
            self.frontend_address, proc, timeout_s, self.root / "logs" / "frontend.log", self.client_tls()[0]
        )
        return proc

    def start_another_frontend(self, key: str, timeout_s: float = 120.0) -> str:
        """One more frontend over the same nodes, on its own ports (several frontends are the normal
        deployment); returns its address. Stopped with the rest."""
        address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        env = {"RECD_SERVER__ADDRESS": address, "RECD_SERVER__METRICS_ADDRESS": metrics}
        proc = self._spawn(key, ["serve", "--single-process"], env)
        log = self.root / "logs" / f"{key}.log"
        self.state.more_frontends[key] = ProcessInfo(proc.pid, address, str(log), _started(proc.pid))
        self.state.save()
        wait_healthy(address, proc, timeout_s, log, self.client_tls()[0])
        return address

    def kill_frontend(self, key: str = "frontend", sig: int = signal.SIGKILL) -> None:
        proc = self._procs.pop(key)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def up(self, frontend: bool = True) -> LocalCluster:
        self.write_config()
        self.state.save()
        for i in range(self.node_count):  # start all, then wait: they boot side by side
            self.start_node(i, wait=False)
        for i in range(self.node_count):
            self.wait_node(i)
        if frontend:
            self.start_frontend()
        return self

    def stop_frontend(self) -> None:
        proc = self._procs.pop("frontend", None)
        if proc is not None:
            _stop_all([proc])

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self._procs.pop(f"node-{node_id}")
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def down(self) -> None:
        _stop_all(list(self._procs.values()))
        self._procs.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.root / STATE_FILE).unlink()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _started(pid: int) -> int:
    return procs.start_time(pid) or 0


def _ours(pid: int) -> bool:
    """The pid still runs one of our commands (a state file written before start times were kept)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"server.cli" in cmdline or any(os.path.basename(a) == b"recd" for a in cmdline[:2])


def _port(address: str) -> int | None:
    port = address.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def cluster_processes(state: ClusterState) -> dict[int, int]:
    """pid -> start time of every process running the cluster: those the state file lists (while still
    the same process), and any other recd process serving one of its addresses or started with its
    config, e.g. a node restarted by hand with `recd shard`."""
    infos = [
        *([state.frontend] if state.frontend else []),
        *state.more_frontends.values(),
        *state.nodes.values(),
    ]
    found: set[int] = set()
    for info in infos:
        if procs.is_same(info.pid, info.started) or (info.started == 0 and _ours(info.pid)):
            found.add(info.pid)
    addresses = [a for info in infos for a in (info.address, info.metrics)] + [state.metrics_address]
    ports = {p for p in map(_port, addresses) if p is not None}
    found |= procs.listening_on(ports)
    found |= procs.naming_config(Path(state.config))
    found.discard(os.getpid())
    return {pid: started for pid in found if (started := procs.start_time(pid)) is not None}


def cluster_down(root: Path, grace_s: float = 10.0) -> list[int]:
    """Stops every process running the cluster of root's state file (`recd cluster down`), however it
    was started; returns their pids."""
    state = ClusterState.load(root)
    victims = cluster_processes(state)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid, started in victims.items():
        while procs.is_same(pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        if procs.is_same(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (root / STATE_FILE).unlink(missing_ok=True)
    return sorted(victims)
