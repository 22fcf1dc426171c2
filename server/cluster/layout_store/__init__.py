"""Where the cluster layout lives, and the one way it changes: a compare-and-set on its epoch.

- `base`: the `LayoutStore` protocol, `LayoutConflict`, and which store a config gets.
- `pushed`: the embedded default: the document each shard node keeps in its data directory, changed by
  handing it to every node (SetLayout); frontends learn the epoch from their probes of the nodes.
- `cql`: with the real backends (profiles.backend: scylla), one row in ScyllaDB changed by a lightweight
  transaction (`... IF epoch = ?`); nodes and frontends poll it.
"""
