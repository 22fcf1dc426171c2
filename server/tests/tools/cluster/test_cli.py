"""`recd cluster up|down` and `recd shards plan` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from server.cluster.local import ClusterState, _ours


def recd(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_cluster_up_plan_down(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    up = recd("cluster", "up", "--nodes", "2", "--no-frontend", "--dir", str(root))
    state = ClusterState.load(root)
    try:
        assert len(json.loads(up.splitlines()[0])["nodes"]) == 2
        assert all(_ours(info.pid) for info in state.nodes.values())
        plan = recd(
            "shards", "plan", "--config", str(root / "cluster.yaml"), "--shards", "22", "--sample", "20000"
        )
        assert "nodes follow epoch 1 (stable)" in plan
        assert "from 20 shards on 2 nodes (replication 2) to 22 shards" in plan
        assert "ideal 9.09%" in plan and "shard  20: (new)" in plan
    finally:
        down = recd("cluster", "down", "--dir", str(root))
    assert "stopped 2 processes" in down
    assert not any(_ours(info.pid) for info in state.nodes.values())
    assert not (root / "cluster.json").exists()
