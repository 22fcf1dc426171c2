"""What operators and developers run; nothing the serving process imports on its request path.

- `datagen`: a synthetic dataset (`recd gen`, `recd demo`); `loading`: bulk loading into a running recd
  (`recd load`).
- `graph_build`: SIMILAR_TO edges derived from co-interactions; `schema_cli`: `recd schema apply` and
  `recd graph build`.
- `evaluation`: `recd eval` and `recd tune`, measured through the serving path.
- `cluster`: `recd shards plan|rebalance` and `recd cluster up|down`.
"""
