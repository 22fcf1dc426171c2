"""Recommendation quality through the serving path: `recd eval` on the demo dataset, as a benchmark.

Served NDCG@10 stands beside its two references from the same run: the exact computation of the same
pipeline (what retrieval costs) and the popularity baseline (what the model is worth); the seen share
says whether a seen item was ever served.
"""

from __future__ import annotations

import asyncio

from server.config import load_config
from server.tools.bench.data import dataset_dir
from server.tools.evaluation.report import quality_table
from server.tools.evaluation.run import EvalOptions, evaluate


def run_quality_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    items, users, dim = (20_000, 2_000, 32) if quick else (200_000, 20_000, 64)
    directory = dataset_dir(items, users, dim)
    config = load_config()
    options = EvalOptions(dataset=directory, progress=False)
    result = asyncio.run(evaluate(options, config))
    assert result.exact is not None  # in-process: the exact computation is always there
    rows = [("served", result.served), ("exact (same pipeline, exhaustive retrieval)", result.exact)]
    rows.append(("popularity baseline", result.popularity))
    figures = result.served_figures
    sources = ", ".join(f"{name} {100 * share:.1f}%" for name, share in figures.source_share.items())
    body = "\n".join(quality_table(rows, result.k))
    body += (
        f"\n\nNDCG@{result.k} served / exact: **{result.ndcg_ratio_exact:.3f}** (target >= 0.95); served /"
        f" popularity: **{result.ndcg_ratio_popularity:.3f}** (target >= 2.0); seen items served:"
        f" **{result.served.seen_share:.1%}** of all slots (target 0)."
        f"\n\n`recd eval {directory}` with the defaults: model `{result.model_version}`, each user's last"
        f" {result.holdout} interactions held out, {result.users_evaluated:,} of {result.users_total:,} users"
        f" evaluated, {result.training_interactions:,} training interactions loaded through the public API"
        f" into a fresh in-process server on the embedded defaults (which shares the 2 cores with the"
        f" evaluation). Slots proposed by {sources}; degraded answers {figures.degraded_answers:,} of"
        f" {figures.answers:,} ({figures.degraded_reasons}); failed RPCs {figures.failed}."
    )
    result_figures = {
        "served_ndcg": result.served.ndcg,
        "exact_ndcg": result.exact.ndcg,
        "popularity_ndcg": result.popularity.ndcg,
        "ratio_exact": float(result.ndcg_ratio_exact or 0.0),
        "ratio_popularity": float(result.ndcg_ratio_popularity or 0.0),
        "seen_share": result.served.seen_share,
        "degraded": float(figures.degraded_answers),
    }
    return body, result_figures
