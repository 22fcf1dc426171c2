"""The shard node: hnswlib indexes behind a narrow interface, with a write-ahead log and snapshots.

The frontend talks to shards only through `shards.client.ShardClient` (in-process or gRPC).
"""
