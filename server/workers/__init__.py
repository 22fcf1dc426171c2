"""`recd serve --workers N`: a group of frontend processes on one machine, behind one public port.

    supervisor (recd serve)            one process: starts, watches and stops the others; serves the
      |                                group's one /metrics page (server.metrics_address)
      +-- worker 0..N-1                frontends on the public port (SO_REUSEPORT: the kernel spreads
      |                                new connections over them), each with a private port of its own
      +-- state node                   the embedded profile store, item graph and cache, served to the
      |                                workers over a unix socket (only for roles left embedded)
      +-- shard node 0..S-1            the shards, when cluster.nodes is empty (else the configured nodes)

Modules, one idea each: `supervisor` (the group's plan, start order, restarts, stop order), `children`
(one supervised process: spawn, readiness, backoff, stop), `control` (the pipe a child follows its
supervisor by), `worker`, `state_node` and `shard_node` (the children's mains), `state_wire` (what the
state node's socket carries), `state_proxies` (the workers' ProfileStore / ItemGraph / Cache over it),
`metrics_view` (the workers' pages as one, labelled worker="i").
"""
