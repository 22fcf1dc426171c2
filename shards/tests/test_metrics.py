"""The shard host's metrics: per-shard items, feed position, snapshot age and replaying read at scrape
time; WAL fsync latency and group size, snapshot and replay durations observed as they happen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from server import _core
from shards.index import ShardIndex
from shards.records import IndexParams, RecordBatch

DIM = 8


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def batch(n: int, start: int = 0) -> RecordBatch:
    ids = [f"m{i}" for i in range(start, start + n)]
    vectors = np.random.default_rng(start).normal(size=(n, DIM)).astype(np.float32)
    return RecordBatch(_core.stable_hash64(ids), ids, vectors, [b""] * n)


def test_a_persistent_shard_reports_its_state(tmp_path: Path) -> None:
    fsyncs = sample("recd_shard_wal_fsync_seconds_count") or 0.0
    groups = sample("recd_shard_wal_group_size_count") or 0.0
    snapshots = sample("recd_shard_snapshot_seconds_count") or 0.0
    replays = sample("recd_shard_replay_seconds_count") or 0.0
    shard = ShardIndex(913, IndexParams(dim=DIM, initial_capacity=64), tmp_path / "s")
    try:
        shard.upsert(batch(30))
        shard.upsert(batch(10, 30))
        shard.delete(batch(5).labels)
        assert sample("recd_shard_items", shard="913") == 35
        assert sample("recd_shard_feed_position", shard="913") == 3  # three writes, three LSNs
        assert sample("recd_shard_unsnapshotted_items", shard="913") == 45
        assert sample("recd_shard_wal_fsync_seconds_count") - fsyncs >= 3  # type: ignore[operator]
        assert sample("recd_shard_wal_group_size_count") - groups >= 3  # type: ignore[operator]
        age = sample("recd_shard_snapshot_age_seconds", shard="913")
        assert age is not None and 0 <= age < 60
        assert sample("recd_shard_replaying") == 0
        shard.snapshot()
        assert sample("recd_shard_snapshot_seconds_count") == snapshots + 1
        assert sample("recd_shard_unsnapshotted_items", shard="913") == 0
    finally:
        shard.close()
    assert sample("recd_shard_items", shard="913") is None  # closed: no longer reported

    reopened = ShardIndex(913, IndexParams(dim=DIM, initial_capacity=64), tmp_path / "s")
    try:
        assert sample("recd_shard_replay_seconds_count") == replays + 2  # the first open, and this one
        assert sample("recd_shard_items", shard="913") == 35
    finally:
        reopened.close()


def test_an_in_memory_shard_has_no_snapshot_age() -> None:
    shard = ShardIndex(914, IndexParams(dim=DIM, initial_capacity=64))
    shard.upsert(batch(4))
    assert sample("recd_shard_items", shard="914") == 4
    assert sample("recd_shard_snapshot_age_seconds", shard="914") is None
    shard.close()
