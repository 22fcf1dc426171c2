"""`recd cluster down` stops what the cluster runs however it was started (a node restarted by hand with
the `recd` console script included), and nothing else: not a process that merely reuses a listed pid,
not an editor with the cluster's config open."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from server.cluster import pids
from server.cluster.local import ClusterState, LocalCluster, cluster_down, wait_healthy
from server.tests.cluster.procs import cluster_config

RECD = Path(sys.executable).with_name("recd")


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_cluster_down_stops_a_node_restarted_with_the_recd_script(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", nodes=2, replication=1, config=cluster_config())
    bystanders: list[subprocess.Popen[bytes]] = []
    by_hand: subprocess.Popen[bytes] | None = None
    try:
        cluster.up(frontend=False)
        started = [cluster._procs["node-0"]]
        cluster.kill_node(1)
        # The operator restarts node 1 by hand, with the console script and a relative config path.
        by_hand = subprocess.Popen(
            [
                str(RECD),
                "shard",
                "--node-id",
                "1",
                "--address",
                cluster.node_address(1),
                "--config",
                "cluster.yaml",
            ],
            cwd=cluster.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_healthy(cluster.node_address(1), by_hand, 60, None)
        # Not the cluster's: a pager on its config, and a process holding a pid the state file lists
        # with another start time (as after the listed process died and its pid was reused).
        bystanders.append(subprocess.Popen(["tail", "-f", str(cluster.config_path)]))
        reused = subprocess.Popen(["sleep", "60"])
        bystanders.append(reused)
        state = ClusterState.load(cluster.root)
        state.more_frontends["old"] = dataclasses.replace(
            state.nodes["0"], pid=reused.pid, started=(pids.start_time(reused.pid) or 0) + 1
        )
        state.save()

        stopped = cluster_down(cluster.root)

        assert by_hand.pid in stopped and started[0].pid in stopped
        deadline = time.monotonic() + 10
        while (alive(by_hand) or alive(started[0])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(by_hand) and not alive(started[0])
        assert all(alive(p) for p in bystanders)
        assert reused.pid not in stopped and os.getpid() not in stopped
        assert not (cluster.root / "cluster.json").exists()
    finally:
        for proc in [*bystanders, *([by_hand] if by_hand else [])]:
            if alive(proc):
                proc.kill()
                proc.wait()
        cluster.down()


def test_start_time_tells_a_reused_pid_apart() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = pids.start_time(proc.pid)
        assert started is not None and pids.is_same(proc.pid, started)
        assert not pids.is_same(proc.pid, started + 1)
    finally:
        proc.kill()
        proc.wait()
    assert pids.start_time(proc.pid) is None  # reaped: gone
