"""The frontend's side of a cluster: which shard nodes there are, where, whether they are up, and which
layout to route by.

- `directory`: node names to gRPC clients, following DNS.
- `manager`: builds the router (server/routing) over the nodes, probes them in the background, and keeps
  the router on the newest layout in the layout store.
"""
