"""`recd serve --workers N`: the supervisor of a worker group.

Start, in order: the group's private directory (0700; a temporary one unless workers.run_dir says
where); a state node per role left embedded (profiles, graph, cache) and the shard nodes (only if
cluster.nodes is empty), side by side, each ready once its health says SERVING; then the N workers, side
by side, each ready once its private health name says it could serve; then "serve" to every worker, whose
health on the public port turns SERVING only then: the group serves once every worker can. A child that
exits or is not ready within workers.start_timeout_s fails the start (a configuration error is not
retried forever); the whole group is then stopped and the command exits 1.

While serving: a child that dies is logged, counted (recd_worker_restarts_total{role}) and started again
after a backoff (workers.restart_backoff_s, doubling per death in a row, at most restart_backoff_max_s),
on the same addresses; a restarted worker gets "serve" as soon as it is ready. Workers' connections
die with them: callers ride through it with gRPC's own wait_for_ready and retry policy (README, "Worker
group").

Stop (SIGTERM or SIGINT to the supervisor): no more restarts; SIGTERM to the workers, which drain
(health NOT_SERVING, in-flight calls get server.grace_s); then SIGTERM to the state nodes and the shard
nodes, which write their final snapshots (workers.stop_timeout_s); whatever still runs past its time is
killed. Then the private directory goes (a temporary one) or is emptied of the group's files.

Children get the supervisor's config file and environment, plus RECD_* variables for what the group
decides: the shard nodes it started (cluster.nodes, replication 1), the state nodes' sockets
(workers.state_socket, `{role}` in it), each worker's metrics port (server.metrics_address) and the
public address (server.address: a port 0 there becomes one free port for all workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import metrics
from server.cluster.local import free_port
from server.config import Config, ConfigError
from server.security.tls import check_listener
from server.workers.children import Backoff, Child, ChildFailed, ChildSpec, stop_children
from server.workers.control import SERVE
from server.workers.metrics_view import GroupMetrics
from server.workers.state_node import embedded_roles
from server.workers.state_wire import socket_for
from server.workers.worker import WORKER_READY

log = logging.getLogger(__name__)

STATE_FILE = "group.json"
SOCKET_FILE = "state-{role}.sock"  # one per state node: state_wire.socket_for
# Unix socket paths are at most 107 bytes on Linux.
_MAX_SOCKET_PATH = 107
_POLL_S = 0.1


def default_worker_count() -> int:
    """The cores this process may run on (os.cpu_count() where the affinity is not known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_shard_nodes(workers: int, shards: int) -> int:
    """One per worker, at most one per shard. With one per four workers the shard nodes' event loops
    (gRPC, the per-shard Python around hnswlib) were what a group ran out of first on 16 cores: QPS
    stopped growing at 4 workers with cores idle, and more nodes served more (BENCHMARKS.md, "Many
    frontends on the 16-core GPU machine": 8 workers over 8 nodes gave the most, 3,667 Recommends/s)."""
    return max(1, min(workers, shards))


class GroupStartFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    """What the group runs, decided before anything starts."""

    workers: int
    address: str  # the public one
    shard_nodes: dict[int, str]  # node id -> address, of the nodes this group starts (empty: configured)
    state_roles: tuple[str, ...]  # a state node for each (the roles the config leaves embedded)


def plan_group(config: Config, workers: int) -> Plan:
    if workers < 1:
        raise ValueError(f"a worker group needs at least one worker, got {workers}")
    host, _, port = config.server.address.rpartition(":")
    address = f"{host}:{free_port()}" if port == "0" else config.server.address
    shard_nodes: dict[int, str] = {}
    if not config.cluster.nodes:
        count = config.workers.shard_nodes or default_shard_nodes(workers, config.shards.count)
        shard_nodes = {i: f"127.0.0.1:{free_port()}" for i in range(count)}
    return Plan(workers, address, shard_nodes, embedded_roles(config))


def check_port_free(address: str) -> None:
    """Refuses a public port that something already listens on: with SO_REUSEPORT the workers would share
    it silently (with, say, a worker left over from an earlier group) instead of failing."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise GroupStartFailed(f"cannot listen on {address}: {exc}") from None


TEMP_PREFIX = "recd-group-"


def sweep_stale_run_dirs(temp_root: Path | None = None) -> list[Path]:
    """Removes the temporary run directories of groups whose supervisor is gone (killed outright, it
    could not remove its own; its children stop by themselves). Only this user's, only with a group.json
    naming a pid that no longer runs."""
    removed = []
    for directory in Path(temp_root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if directory.stat().st_uid != os.getuid():
                continue
            pid = int(json.loads((directory / STATE_FILE).read_text())["pid"])
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(directory)
                removed.append(directory)
    return removed


class WorkerGroup:
    def __init__(self, config: Config, workers: int, config_path: str | None = None) -> None:
        self.config = config
        self.plan = plan_group(config, workers)
        self._config_args = ["--config", str(Path(config_path).resolve())] if config_path else []
        w = config.workers
        self._temporary_dir = w.run_dir is None
        if w.run_dir is None and Path("/proc/self").exists():
            sweep_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX) if w.run_dir is None else w.run_dir)
        self.socket_template = str(self.run_dir / SOCKET_FILE)
        self.workers: list[Child] = []
        self.backing: list[Child] = []  # state nodes and shard nodes: up before the workers, down after
        self.serving = False
        self._stopping = False
        self._restarts: dict[str, asyncio.Task[None]] = {}
        self._metrics: GroupMetrics | None = None
        self._worker_metrics: dict[int, str] = {}
        self._node_metrics: dict[int, str] = {}

    # --- the plan as processes ----------------------------------------------------------------------------
    def _env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        if self.plan.shard_nodes:
            nodes = [f"{i}={a}" for i, a in sorted(self.plan.shard_nodes.items())]
            env["RECD_CLUSTER__NODES"] = json.dumps(nodes)
            env["RECD_CLUSTER__REPLICATION"] = "1"
        env["RECD_WORKERS__STATE_SOCKET"] = ""
        env.update(overrides)
        return env

    def _command(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *self._config_args, *args]

    def _backoff(self) -> Backoff:
        w = self.config.workers
        return Backoff(w.restart_backoff_s, w.restart_backoff_max_s, w.restart_reset_s)

    def _build_children(self) -> None:
        for role in self.plan.state_roles:
            socket_path = socket_for(self.socket_template, role)
            spec = ChildSpec(
                "state_node",
                f"state-node-{role}",
                self._command("server.workers.state_node", "--socket", socket_path, "--role", role),
                self._env(),
                f"unix:{socket_path}",
                info={"role": role, "socket": socket_path},
            )
            self.backing.append(Child(spec, self._backoff()))
        for node_id, address in sorted(self.plan.shard_nodes.items()):
            node_metrics = f"127.0.0.1:{free_port()}"
            self._node_metrics[node_id] = node_metrics
            args = ("--node-id", str(node_id), "--address", address, "--metrics-address", node_metrics)
            spec = ChildSpec(
                "shard_node",
                f"shard-node-{node_id}",
                self._command("server.workers.shard_node", *args),
                self._env(),
                address,
                health_tls=self.config.cluster.client_tls,
                info={"node_id": node_id, "address": address, "metrics_address": node_metrics},
            )
            self.backing.append(Child(spec, self._backoff()))
        state_socket = self.socket_template if self.plan.state_roles else ""
        for index in range(self.plan.workers):
            private = f"127.0.0.1:{free_port()}"
            metrics_address = f"127.0.0.1:{free_port()}"
            self._worker_metrics[index] = metrics_address
            env = self._env(
                RECD_SERVER__ADDRESS=self.plan.address,
                RECD_SERVER__METRICS_ADDRESS=metrics_address,
                RECD_WORKERS__STATE_SOCKET=state_socket,
            )
            spec = ChildSpec(
                "worker",
                f"worker-{index}",
                self._command("server.workers.worker", "--index", str(index), "--private-address", private),
                env,
                private,
                WORKER_READY,
                health_tls=self.config.server.client_tls,
                info={"index": index, "private_address": private, "metrics_address": metrics_address},
            )
            self.workers.append(Child(spec, self._backoff()))

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.run_dir, 0o700)  # the state nodes' sockets carry pickles: this user only
        except OSError as exc:
            raise GroupStartFailed(f"run directory {self.run_dir}: {exc}") from None
        with contextlib.suppress(OSError, ValueError, KeyError):
            other = int(json.loads((self.run_dir / STATE_FILE).read_text())["pid"])
            if other != os.getpid() and Path(f"/proc/{other}").exists():
                raise GroupStartFailed(f"another group (pid {other}) runs in {self.run_dir}")
        longest = max(
            (socket_for(self.socket_template, r) for r in self.plan.state_roles), key=len, default=""
        )
        if len(longest) > _MAX_SOCKET_PATH:
            raise GroupStartFailed(
                f"the state node socket path {longest} is {len(longest)} bytes, over the "
                f"{_MAX_SOCKET_PATH} a unix socket allows: give workers.run_dir a shorter path than "
                f"{self.run_dir}"
            )

    # --- running ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Starts the group, serves until SIGTERM/SIGINT, then stops it. GroupStartFailed if it could not
        start (everything it started is stopped again first)."""
        from server.lifecycle import stop_signal

        stop = stop_signal()  # first: a signal during the start stops what has started
        try:
            self._prepare_run_dir()
            check_port_free(self.plan.address)
            try:  # every worker would refuse it: say so once, before anything starts
                check_listener(self.plan.address, self.config.server.tls, "server.tls")
            except ConfigError as exc:
                raise GroupStartFailed(str(exc)) from None
            try:
                self._metrics = GroupMetrics(
                    self.config.server.metrics_address,
                    self._metrics_targets,
                    lambda: dict(self._node_metrics),
                )
            except OSError as exc:
                raise GroupStartFailed(f"metrics on {self.config.server.metrics_address}: {exc}") from None
            self._build_children()
            starting = asyncio.ensure_future(self._start())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("signal received while starting; stopping the group")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return
            stopped.cancel()
            starting.result()
            await self._supervise(stop)
            log.info("signal received; stopping the group")
        finally:
            await self.stop()

    async def _start(self) -> None:
        timeout_s = self.config.workers.start_timeout_s
        if self.config.data_dir is None:
            log.warning("data_dir is not set: a shard node or a state node that dies comes back empty")
        for child in self.backing:
            child.spawn()
        self._save_state()
        await self._all_ready(self.backing, timeout_s)
        for child in self.workers:
            child.spawn()
        self._save_state()
        await self._all_ready(self.workers, timeout_s)
        for child in self.workers:
            child.send(SERVE)
        await self._all_ready(self.workers, timeout_s, service="")
        self.serving = True
        metrics.WORKERS_SERVING.set(len(self.workers))
        self._save_state()
        log.info(
            "recd worker group serving on %s: %d workers, %s, %s (metrics: %s, run dir: %s)",
            self.plan.address,
            len(self.workers),
            f"{len(self.plan.shard_nodes)} shard nodes"
            if self.plan.shard_nodes
            else "configured shard nodes",
            f"state nodes for {', '.join(self.plan.state_roles)}"
            if self.plan.state_roles
            else "no state node",
            self.config.server.metrics_address,
            self.run_dir,
        )

    async def _all_ready(self, children: list[Child], timeout_s: float, service: str | None = None) -> None:
        results = await asyncio.gather(
            *(c.wait_ready(timeout_s, service) for c in children), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise GroupStartFailed("; ".join(str(f) for f in failed))

    async def _supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for child in [*self.backing, *self.workers]:
                name = child.spec.name
                if name in self._restarts or child.exit_code() is None:
                    continue
                log.error(
                    "%s (pid %s) exited with %s after %.1fs; restarting it",
                    name,
                    child.pid,
                    child.exit_code(),
                    child.up_for_s,
                )
                child.ready = False
                child.close_pipe()
                self._count_serving()
                self._restarts[name] = asyncio.ensure_future(self._restart(child))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _POLL_S)

    async def _restart(self, child: Child) -> None:
        """Starts `child` again (after its backoff) until it is ready; a start that fails is a death too."""
        try:
            while not self._stopping:
                delay = child.backoff.next_delay(child.up_for_s)
                log.info("%s: restarting in %.1fs", child.spec.name, delay)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                child.spawn()
                child.restarts += 1
                metrics.WORKER_RESTARTS.labels(child.spec.role).inc()
                self._save_state()
                try:
                    await child.wait_ready(self.config.workers.start_timeout_s)
                except ChildFailed as exc:
                    log.error("%s: %s", child.spec.name, exc)
                    await stop_children([child], 5.0)
                    continue
                if child.spec.role == "worker":
                    child.send(SERVE)
                log.info("%s is back (pid %s)", child.spec.name, child.pid)
                self._count_serving()
                self._save_state()
                return
        finally:
            self._restarts.pop(child.spec.name, None)

    def _count_serving(self) -> None:
        metrics.WORKERS_SERVING.set(sum(1 for c in self.workers if c.ready and c.alive()))

    async def stop(self) -> None:
        """Workers first (they drain), then the state nodes and the shard nodes (final snapshots)."""
        self._stopping = True
        self.serving = False
        for task in list(self._restarts.values()):
            task.cancel()
        for task in list(self._restarts.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stop_children(self.workers, self.config.server.grace_s + 10.0)
        metrics.WORKERS_SERVING.set(0)
        self._save_state()
        await stop_children(self.backing, self.config.workers.stop_timeout_s)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._temporary_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            names = [STATE_FILE, *(socket_for(SOCKET_FILE, r) for r in self.plan.state_roles)]
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / name).unlink()
        log.info("recd worker group stopped")

    # --- what others read ---------------------------------------------------------------------------------
    def _metrics_targets(self) -> dict[int, str]:
        return dict(self._worker_metrics)

    def state(self) -> dict[str, Any]:
        def child(c: Child) -> dict[str, Any]:
            return {
                "name": c.spec.name,
                "pid": c.pid,
                "alive": c.alive(),
                "ready": c.ready,
                "restarts": c.restarts,
                **c.spec.info,
            }

        return {
            "pid": os.getpid(),
            "address": self.plan.address,
            "metrics_address": self.config.server.metrics_address,
            "serving": self.serving,
            "workers": [child(c) for c in self.workers],
            "state_nodes": [child(c) for c in self.backing if c.spec.role == "state_node"],
            "shard_nodes": [child(c) for c in self.backing if c.spec.role == "shard_node"],
        }

    def _save_state(self) -> None:
        """group.json in the run directory, replaced atomically: pids and addresses, for operators and
        tests."""
        if not self.run_dir.exists():
            return
        temp = self.run_dir / f"{STATE_FILE}.tmp"
        temp.write_text(json.dumps(self.state(), indent=2))
        os.replace(temp, self.run_dir / STATE_FILE)


def run_group(config: Config, workers: int, config_path: str | None = None) -> int:
    """`recd serve --workers N`: 0 once stopped by a signal, 1 if the group could not start."""
    from server.cli import run_server_loop

    try:
        group = WorkerGroup(config, workers, config_path)
    except (ValueError, OSError) as exc:
        log.error("cannot plan the worker group: %s", exc)
        return 1
    failed: list[BaseException] = []

    async def main() -> None:
        try:
            await group.run()
        except GroupStartFailed as exc:
            failed.append(exc)

    run_server_loop(main(), config)
    if failed:
        log.error("the worker group did not start: %s", failed[0])
        return 1
    return 0
