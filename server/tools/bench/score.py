"""CPU FP16 scoring (Rust core) vs NumPy FP32 doing the same gather and dot on the same shapes."""

from __future__ import annotations

import time

import numpy as np

from server import _core
from server.tools.bench.report import table

TABLE_ROWS = 200_000


def _best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def run_score_bench(quick: bool = False) -> tuple[str, list[dict[str, float]]]:
    rng = np.random.default_rng(0)
    results = []
    for dim in (64, 128):
        vectors = rng.normal(size=(TABLE_ROWS, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        table16 = _core.F16Table(dim, TABLE_ROWS)
        table16.set_rows(np.arange(TABLE_ROWS, dtype=np.int64), vectors)
        queries = rng.normal(size=(64, dim)).astype(np.float32)
        rows = rng.integers(0, TABLE_ROWS, size=(64, 1000)).astype(np.int64)
        repeats = 5 if quick else 30

        def numpy_fp32(q: np.ndarray = queries, v: np.ndarray = vectors, r: np.ndarray = rows) -> np.ndarray:
            return np.einsum("bd,bcd->bc", q, v[r])

        def core_f16(
            t: _core.F16Table = table16, q: np.ndarray = queries, r: np.ndarray = rows
        ) -> np.ndarray:
            return t.score(q, r)

        expected = numpy_fp32()
        got = core_f16()
        max_err = float(np.max(np.abs(expected - got)))
        t_np = _best_of(numpy_fp32, repeats)
        t_core = _best_of(core_f16, repeats)
        cands = 64 * 1000
        results.append(
            {
                "dim": dim,
                "numpy_ms": t_np * 1e3,
                "core_ms": t_core * 1e3,
                "speedup": t_np / t_core,
                "numpy_mcands_s": cands / t_np / 1e6,
                "core_mcands_s": cands / t_core / 1e6,
                "numpy_table_mib": vectors.nbytes / 2**20,
                "core_table_mib": table16.nbytes / 2**20,
                "max_abs_err": max_err,
            }
        )
    body = table(
        [
            "shape",
            "NumPy FP32 ms",
            "core FP16 ms",
            "speed-up",
            "NumPy Mcand/s",
            "core Mcand/s",
            "table MiB FP32 / FP16",
            "max abs err",
        ],
        [
            [
                f"64 x 1000 x {r['dim']}",
                r["numpy_ms"],
                r["core_ms"],
                f"{r['speedup']:.2f}x",
                r["numpy_mcands_s"],
                r["core_mcands_s"],
                f"{r['numpy_table_mib']:.1f} / {r['core_table_mib']:.1f}",
                f"{r['max_abs_err']:.1e}",
            ]
            for r in results
        ],
    )
    body += (
        "\n\nBoth gather 64 requests x 1,000 random rows of a 200,000-row table and dot them with the request's"
        " vector; NumPy as `einsum('bd,bcd->bc', q, table32[rows])`, the core from FP16 storage with FP32"
        " accumulation. Median of the repeats. Target: >= 1.0x NumPy FP32 at half its memory."
    )
    return body, results
