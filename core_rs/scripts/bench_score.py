"""Quick timing of F16Table.score against NumPy FP32 gather + dot on the same inputs.

Not a test: run it by hand after building the extension, from the repository root:
    .venv/bin/python core_rs/scripts/bench_score.py
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np

from server._core import F16Table

TABLE_ROWS = 200_000
BATCH, CANDIDATES = 64, 1000


def timings(fn: Callable[[], object], repeats: int = 50) -> tuple[float, float]:
    """(best, median) seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def compare(dim: int, rng: np.random.Generator) -> None:
    table32 = rng.standard_normal((TABLE_ROWS, dim), dtype=np.float32)
    table32 /= np.linalg.norm(table32, axis=1, keepdims=True)
    table = F16Table(dim, capacity=TABLE_ROWS)
    table.set_rows(np.arange(TABLE_ROWS, dtype=np.int64), table32)
    queries = rng.standard_normal((BATCH, dim), dtype=np.float32)
    rows = rng.integers(0, TABLE_ROWS, size=(BATCH, CANDIDATES), dtype=np.int64)

    def numpy_fp32() -> np.ndarray:
        return np.einsum("bd,bcd->bc", queries, table32[rows])

    def rust_f16() -> np.ndarray:
        return table.score(queries, rows)

    np.testing.assert_allclose(rust_f16(), numpy_fp32(), rtol=1e-2, atol=1e-2)
    (np_best, np_median), (rs_best, rs_median) = timings(numpy_fp32), timings(rust_f16)
    print(
        f"{BATCH} x {CANDIDATES} x d={dim} ({TABLE_ROWS} rows): "
        f"numpy fp32 {np_best * 1e3:.2f} ms (median {np_median * 1e3:.2f}), "
        f"rust f16 {rs_best * 1e3:.2f} ms (median {rs_median * 1e3:.2f}), "
        f"speed-up {np_best / rs_best:.1f}x (median {np_median / rs_median:.1f}x)"
    )


def main() -> None:
    print(f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    rng = np.random.default_rng(0)
    for dim in (64, 128):
        compare(dim, rng)


if __name__ == "__main__":
    main()
