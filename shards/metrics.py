"""The shard host's own metrics (exported by whichever process hosts the shards: a shard node serves them
on its metrics address, an embedded frontend on its own page).

Per-shard state (items, feed position, snapshot age, replaying) is read at scrape time from the open
shards (`ShardCollector`), so a shard dropped by a rebalance stops being reported. The `shard` label is a
logical shard number (20 by default), never an item.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shards.index import ShardIndex

# Dense below 100 ms (the Recommend budget a search is part of), sparse above.
OP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

SEARCH_CPU = Counter(
    "recd_shard_search_cpu_seconds_total",
    "CPU time the shard searches took (hnswlib and the Python around it), by the searching threads' clocks",
)
OP_LATENCY = Histogram(
    "recd_shard_node_op_seconds",
    "Time the shard host took for one call (search: a batch of queries over the listed shards; "
    "upsert/delete: logged, fsynced and applied)",
    ["op"],
    buckets=OP_BUCKETS,
)
WAL_FSYNC = Histogram(
    "recd_shard_wal_fsync_seconds", "One write + fdatasync of a WAL group commit", buckets=OP_BUCKETS
)
WAL_GROUP = Histogram(
    "recd_shard_wal_group_size",
    "Appends carried by one WAL sync (group commit: concurrent writers share a sync)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
SNAPSHOT_DURATION = Histogram(
    "recd_shard_snapshot_seconds", "Time one shard snapshot took to write", buckets=SLOW_BUCKETS
)
REPLAY_DURATION = Histogram(
    "recd_shard_replay_seconds",
    "Time one shard took to open: load its snapshot and replay its WAL",
    buckets=SLOW_BUCKETS,
)

_shards: weakref.WeakSet[ShardIndex] = weakref.WeakSet()
_replaying: dict[int, float] = {}  # shard id -> when its replay began
_lock = threading.Lock()


def opening(shard_id: int) -> None:
    with _lock:
        _replaying[shard_id] = time.monotonic()


def opened(shard: ShardIndex | None, shard_id: int) -> None:
    """The shard is open (None: opening failed); its replay time is observed."""
    with _lock:
        began = _replaying.pop(shard_id, None)
        if shard is not None:
            _shards.add(shard)
    if began is not None and shard is not None:
        REPLAY_DURATION.observe(time.monotonic() - began)


class ShardCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        items = GaugeMetricFamily("recd_shard_items", "Live items in a shard", labels=["shard"])
        feed = GaugeMetricFamily(
            "recd_shard_feed_position",
            "LSN of the last change a shard's change feed published",
            labels=["shard"],
        )
        age = GaugeMetricFamily(
            "recd_shard_snapshot_age_seconds",
            "Seconds since the shard's last snapshot (or since it opened, if it took none): the WAL a "
            "restart replays grows with it",
            labels=["shard"],
        )
        unsnapshotted = GaugeMetricFamily(
            "recd_shard_unsnapshotted_items",
            "Items applied since the shard's last snapshot",
            labels=["shard"],
        )
        replaying = GaugeMetricFamily(
            "recd_shard_replaying", "Shards this process is opening (loading a snapshot, replaying the WAL)"
        )
        now = time.time()
        with _lock:
            shards = [s for s in _shards if not s.closed]
            replaying.add_metric([], len(_replaying))
        for shard in sorted(shards, key=lambda s: s.shard_id):
            label = [str(shard.shard_id)]
            items.add_metric(label, len(shard))
            feed.add_metric(label, shard.changes.position)
            if shard.persistent:
                age.add_metric(label, now - shard.snapshot_time)
                unsnapshotted.add_metric(label, shard.unsnapshotted)
        yield from (items, feed, age, unsnapshotted, replaying)


REGISTRY.register(ShardCollector())
