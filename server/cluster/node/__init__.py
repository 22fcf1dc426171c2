"""The shard node process (`recd shard --node-id N`).

- `process`: starts the node: its shards, its gRPC service, and what it follows.
- `keeper`: the layout the node follows, kept on disk, and how it moves to a newer one.
- `follower`: with the layout in ScyllaDB, polls it and hands the node each newer epoch.
"""
