"""From item ids and queries to the shard nodes that hold them: the frontend's router.

- `topology`: what the router routes by (item ring, each logical shard's replicas, the layout epoch) and
  its policy; `topology_of` turns a cluster layout (server/cluster/layout.py) into one.
- `health`: a circuit breaker and a window of recent latencies per node; `hedging`: when a late node's
  shards are also asked of another replica, within a budget.
- `replicas`: the nodes the router can reach, which replica to ask, and one call to a node through its
  breaker.
- `search`: the fan-out of a batch of queries, one call per node, with failover and hedging, merged.
- `writes`: upserts and deletes to every replica, acknowledged by ack groups, retried on a stale layout.
- `reads`: one live replica per shard: point reads (fetch), whole-shard scans (scan_all), stats.
- `router`: `ShardRouter`, which composes them; the cluster manager (server/cluster/membership) keeps
  its topology current.
"""
