"""The cluster's operator commands; what the frontend and the shard node run stays in server/cluster.

- `commands`: the CLI, `recd shards plan|rebalance` and `recd cluster up|down`.
- `rebalance`: what moves when nodes or the shard count change, and moving it online, each step a
  compare-and-set in the layout store (server/cluster/layout_store).
"""
