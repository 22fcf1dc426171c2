"""recd as a cluster: shard nodes as processes, and what the frontend needs to use them well.

- `layout`: which node hosts which logical shard (a ring over node names with a replication factor),
  versioned by an epoch, and how one layout moves to the next (rebalancing phases).
- `health`: a circuit breaker and a latency window per node; `hedging`: when to send a second request.
- `directory`: node names to gRPC clients, re-resolving DNS names.
- `manager`: the frontend's side: builds the router, probes nodes, follows layout changes.
- `node`: the shard node process (`recd shard --node-id N`).
- `local`: the processes behind `recd cluster up|down`. The operator commands themselves
  (`recd shards plan|rebalance`, `recd cluster up|down`) are in server/tools/cluster.
"""
