"""recd as a cluster: shard nodes as processes, and what frontends and operators need to use them well.

By role:
- shared: `layout` (which node hosts which logical shard: a ring over node names with a replication
  factor, versioned by an epoch, and how one layout moves to the next) and `layout_store` (where the
  layout lives and how it changes: a compare-and-set on the epoch; on the nodes themselves by default,
  in ScyllaDB with the real backends).
- the shard node process: `node` (`recd shard --node-id N`: its shards, the layout it keeps, and
  following the store).
- the frontend's membership: `membership` (node names to clients following DNS, background probes,
  following the layout). The router itself, with per-node health and hedging, is server/routing.
- operators: `local` (the processes behind `recd cluster up|down`); the commands themselves
  (`recd shards plan|rebalance`, `recd cluster up|down`) and the rebalancer are in server/tools/cluster.
"""
