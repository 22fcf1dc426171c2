"""Crash safety: whatever a killed shard node acknowledged is there after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shards.host import ShardHost
from shards.records import IndexParams
from shards.tests.restart_writer import DIM, SHARDS, vectors_for

REPO = Path(__file__).resolve().parents[2]


def run_until_killed(data_dir: Path, kill_after_lines: int) -> tuple[set[int], set[int]]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shards.tests.restart_writer", str(data_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if len(lines) >= kill_after_lines:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # acknowledged before the kill, still in the pipe
        proc.stdout.close()
        proc.wait(10)
    assert len(lines) >= kill_after_lines, f"writer died early (exit {proc.returncode})"
    upserted: set[int] = set()
    deleted: set[int] = set()
    last_upsert: list[int] = []
    for line in lines + rest.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # cut by the kill: never a complete acknowledgement
        kind, *labels = line.split()
        if kind == "U":
            last_upsert = [int(x) for x in labels]
            upserted.update(last_upsert)
        else:
            deleted.add(int(labels[0]))
    # The last batch's first label may have been deleted without the "D" line getting out: unknown.
    upserted.discard(last_upsert[0])
    return upserted, deleted


@pytest.mark.parametrize("kill_after_lines", [12, 90])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, kill_after_lines: int) -> None:
    upserted, deleted = run_until_killed(tmp_path, kill_after_lines)
    assert len(upserted) >= kill_after_lines * 30
    live = np.array(sorted(upserted - deleted), dtype=np.uint64)
    with ShardHost(IndexParams(dim=DIM), tmp_path, range(SHARDS)) as host:
        vectors = vectors_for(live)
        for shard in range(SHARDS):
            mine = live % SHARDS == shard
            fetched = host.fetch(shard, live[mine])
            assert fetched.labels.tolist() == live[mine].tolist()
            np.testing.assert_array_equal(fetched.vectors, vectors[mine])
            assert fetched.item_ids == [f"item-{label}" for label in live[mine].tolist()]
            hits = host.search(vectors[mine], [shard], k=1, ef=100)[shard]
            assert not isinstance(hits, Exception)
            np.testing.assert_array_equal(hits.labels[:, 0], live[mine])
            gone = [label for label in deleted if label % SHARDS == shard]
            assert len(host.fetch(shard, gone)) == 0
