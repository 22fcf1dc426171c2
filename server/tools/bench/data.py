"""Benchmark data: the demo dataset when it exists, else a generated one of the same shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

DEMO_DATASET = Path("data/demo/dataset")
BENCH_DATASET = Path("data/bench/dataset")


def dataset_dir(items: int, users: int, dim: int) -> Path:
    """The demo dataset if it has the wanted shape, otherwise one generated under data/bench."""
    for candidate in (DEMO_DATASET, BENCH_DATASET / f"{items}x{dim}"):
        manifest = candidate / "manifest.json"
        if manifest.exists():
            m = json.loads(manifest.read_text())
            if m.get("items") == items and m.get("dim") == dim:
                return candidate
    from server.tools.datagen import generate

    out = BENCH_DATASET / f"{items}x{dim}"
    generate(out, items=items, users=users, dim=dim, seed=7)
    return out


def item_vectors(directory: Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    table = pq.read_table(directory / "items.parquet", columns=["item_id", "embedding"])
    ids = table.column("item_id").to_pylist()
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1)
    return ids, vectors


def query_vectors(vectors: npt.NDArray[np.float32], n: int, seed: int = 11) -> npt.NDArray[np.float32]:
    """User-like queries: the normalised mean of a few items of one neighbourhood, plus noise."""
    rng = np.random.default_rng(seed)
    anchors = vectors[rng.integers(0, len(vectors), size=n)]
    q = anchors + 0.3 * rng.normal(size=anchors.shape).astype(np.float32) / np.sqrt(vectors.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(
    vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    """Brute-force inner-product top-k: the oracle for recall."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ vectors.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return out
