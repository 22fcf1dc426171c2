"""The supervisor's decisions (what a group runs, how often it restarts, how many workers `recd serve`
starts) and its failure modes as processes: a group that cannot start, a supervisor killed outright."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.cli import build_parser, serve_workers
from server.config import load_config
from server.tests.workers.group import Group, alive
from server.workers.children import Backoff
from server.workers.supervisor import default_worker_count, plan_group, sweep_stale_run_dirs


def test_backoff_doubles_per_death_in_a_row_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff(0.5, 4.0, reset_after_s=60.0)
    assert [backoff.next_delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.next_delay(61.0) == 0.5
    assert backoff.next_delay(0.1) == 1.0


@dataclass(frozen=True)
class PlanCase:
    name: str
    env: dict[str, str]
    workers: int
    shard_nodes: int  # started by the group
    state_roles: tuple[str, ...]


ALL = ("profiles", "graph", "cache")
PLANS = [
    PlanCase("embedded", {}, 2, 2, ALL),
    PlanCase("one-node-per-worker", {}, 9, 9, ALL),
    PlanCase("at-most-one-node-per-shard", {"RECD_SHARDS__COUNT": "6"}, 9, 6, ALL),
    PlanCase("nodes-as-asked", {"RECD_WORKERS__SHARD_NODES": "3"}, 2, 3, ALL),
    PlanCase("configured-nodes", {"RECD_CLUSTER__NODES": "[127.0.0.1:7001, 127.0.0.1:7002]"}, 2, 0, ALL),
    PlanCase(
        "real-backends",
        {"RECD_PROFILES__BACKEND": "scylla", "RECD_GRAPH__BACKEND": "neo4j", "RECD_CACHE__BACKEND": "redis"},
        2,
        2,
        (),
    ),
    PlanCase(
        "only-the-cache-embedded",
        {"RECD_PROFILES__BACKEND": "scylla", "RECD_GRAPH__BACKEND": "neo4j"},
        2,
        2,
        ("cache",),
    ),
]


@pytest.mark.parametrize("case", PLANS, ids=[c.name for c in PLANS])
def test_plan(case: PlanCase) -> None:
    config = load_config(environ={"RECD_SERVER__ADDRESS": "127.0.0.1:0", **case.env})
    plan = plan_group(config, case.workers)
    assert len(plan.shard_nodes) == case.shard_nodes
    assert all(a.startswith("127.0.0.1:") for a in plan.shard_nodes.values())
    assert plan.state_roles == case.state_roles
    # Port 0 would give each worker a port of its own: the group picks one for all.
    assert plan.address.startswith("127.0.0.1:") and not plan.address.endswith(":0")


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["serve", "--single-process"], {"RECD_WORKERS__COUNT": "4"}, 0),
        (["serve", "--workers", "0"], {}, 0),
        (["serve", "--workers", "3"], {"RECD_WORKERS__COUNT": "4"}, 3),
        (["serve"], {"RECD_WORKERS__COUNT": "4"}, 4),
        (["serve"], {"RECD_WORKERS__COUNT": "0"}, 0),
        (["serve"], {}, None),  # one per core
    ],
)
def test_how_many_workers_serve_starts(argv: list[str], env: dict[str, str], expected: int | None) -> None:
    args = build_parser().parse_args(argv)
    count = serve_workers(args, load_config(environ=env))
    assert count == (default_worker_count() if expected is None else expected)


def test_workers_and_single_process_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "2", "--single-process"])


def test_a_taken_public_port_fails_the_start_and_leaves_nothing(tmp_path: Path) -> None:
    group = Group(tmp_path, tmp_path / "data", workers=1)
    host, _, port = group.address.rpartition(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        try:
            with pytest.raises(RuntimeError, match="exited with 1"):
                group.start(timeout_s=60)
            assert "cannot listen on" in group.log_tail()
        finally:
            group.close()


def test_children_stop_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    group = Group(tmp_path, tmp_path / "data", workers=1)
    try:
        group.start()
        pids = group.pids(group.state())
        assert len(pids) == 5  # the worker, the shard node, the state nodes of the three roles
        assert group.stop(signal.SIGKILL) == -signal.SIGKILL
        # Their pipe from the supervisor ended: each drains and exits on its own.
        deadline = time.monotonic() + 60
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)]
    finally:
        group.close()


def test_stale_temporary_run_dirs_of_killed_supervisors_are_swept(tmp_path: Path) -> None:
    dead, live, starting = (tmp_path / f"recd-group-{n}" for n in ("dead", "live", "starting"))
    for directory in (dead, live, starting):
        directory.mkdir()
    (dead / "group.json").write_text(json.dumps({"pid": 2**22 + 12345}))  # above pid_max: never running
    (live / "group.json").write_text(json.dumps({"pid": os.getppid()}))
    assert sweep_stale_run_dirs(tmp_path) == [dead]
    assert live.exists() and starting.exists()  # no group.json yet: a group still starting
