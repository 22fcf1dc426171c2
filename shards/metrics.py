"""The shard host's own metrics (exported by whichever process hosts the shards)."""

from __future__ import annotations

from prometheus_client import Counter

SEARCH_CPU = Counter(
    "recd_shard_search_cpu_seconds_total",
    "CPU time the shard searches took (hnswlib and the Python around it), by the searching threads' clocks",
)
