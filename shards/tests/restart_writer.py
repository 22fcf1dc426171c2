"""Child process for test_restart: writes to a ShardHost until killed, printing what was acknowledged.

Lines: "U <label> ..." after an upsert returned, "D <label>" after a delete returned.
"""

from __future__ import annotations

import sys

import numpy as np

from shards.host import ShardHost
from shards.records import IndexParams
from shards.tests.helpers import batch_of, unit

DIM = 16
SHARDS = 4
PER_BATCH = 40


def vectors_for(labels: np.ndarray) -> np.ndarray:
    """Deterministic per label, so the parent can recompute them."""
    return unit(np.stack([np.random.default_rng(int(label)).normal(size=DIM) for label in labels]))


def main(data_dir: str) -> None:
    host = ShardHost(IndexParams(dim=DIM), data_dir, range(SHARDS), snapshot_every_records=300)
    batch = 0
    while True:
        labels = (np.arange(batch * PER_BATCH, (batch + 1) * PER_BATCH, dtype=np.uint64) * 7919 + 1).astype(
            np.uint64
        )
        vectors = vectors_for(labels)
        shard = labels % SHARDS
        host.upsert({s: batch_of(labels[shard == s], vectors[shard == s]) for s in range(SHARDS)})
        print("U", *labels.tolist(), flush=True)
        if batch % 5 == 4:
            victim = int(labels[0])
            host.delete(victim % SHARDS, [victim])
            print("D", victim, flush=True)
        batch += 1


if __name__ == "__main__":
    main(sys.argv[1])
