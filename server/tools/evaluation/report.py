"""The eval report: markdown for people, JSON for machines, and the CI thresholds."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from server.tools.evaluation.dataset import describe_skips
from server.tools.evaluation.metrics import ListQuality
from server.tools.evaluation.run import EvalResult


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def quality_table(rows: list[tuple[str, ListQuality]], k: int) -> list[str]:
    lines = [
        f"| | HR@{k} | NDCG@{k} | recall@{k} | coverage | seen share | short answers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, q in rows:
        lines.append(
            f"| {label} | {q.hr:.4f} | {q.ndcg:.4f} | {q.recall:.4f} | {_pct(q.coverage)} "
            f"({q.distinct_items}) | {_pct(q.seen_share)} | {q.short_answers} |"
        )
    return lines


def to_markdown(result: EvalResult) -> str:
    r = result
    k = r.k
    skipped_users = ", ".join(f"{n} {reason}" for reason, n in sorted(r.users_skipped.items())) or "none"
    input_notes = describe_skips(r.input) or "none skipped"
    lines = [
        f"# recd eval: {r.dataset}",
        "",
        f"- Served by: {r.target}; model `{r.model_version}`; graph: {_edges(r.edges)}.",
        f"- Split: each user's last {r.holdout} interactions held out (relevant: the held-out items the "
        f"user had not seen in training); users need at least {r.holdout + r.min_train} interactions.",
        f"- Users: {r.users_evaluated} evaluated of {r.users_total} (not evaluated: {skipped_users}).",
        f"- Input: {r.input.interactions_read} interactions read, {r.training_interactions} loaded for "
        f"training; {input_notes}; {r.input.users_out_of_order} users' rows were out of time order "
        f"(sorted); catalogue {r.catalogue} items"
        + (f" ({r.input.duplicate_item_ids} duplicate item rows)" if r.input.duplicate_item_ids else "")
        + ".",
        "",
    ]
    rows = [("served", r.served)]
    if r.exact is not None:
        rows.append(("exact (same pipeline, exhaustive retrieval)", r.exact))
    rows.extend((f"exact, model `{version}`", q) for version, q in r.exact_with.items())
    rows.append(("popularity baseline", r.popularity))
    lines.extend(quality_table(rows, k))
    lines.append("")
    lines.append(
        f"NDCG@{k} served / exact: **{_ratio(r.ndcg_ratio_exact)}**; "
        f"served / popularity: **{_ratio(r.ndcg_ratio_popularity)}**."
    )
    if r.exact is None:
        lines.append(
            f"Exact comparison {r.exact_note} (only an in-process server's pieces can be recomputed "
            "exhaustively); a running server may also hold data besides this training part."
        )
    f = r.served_figures
    shares = ", ".join(f"{name} {_pct(share)}" for name, share in f.source_share.items())
    reasons = ", ".join(f"{name} {n}" for name, n in sorted(f.degraded_reasons.items()))
    lines.extend(
        [
            "",
            f"Served answers: {f.answers}; slots proposed by {shares} (a slot can have several sources); "
            f"degraded answers: {f.degraded_answers}" + (f" ({reasons})" if reasons else "") + f"; "
            f"failed RPCs: {f.failed}" + (f" (e.g. {f.failure_example})" if f.failure_example else "") + ".",
            "Timing: " + ", ".join(f"{name} {s:.1f} s" for name, s in r.seconds.items()) + ".",
        ]
    )
    return "\n".join(lines) + "\n"


def _edges(mode: str) -> str:
    return {
        "train": "edges derived from the training interactions",
        "dataset": "the dataset's edges file (leaks the hold-out if it was derived from all interactions)",
        "none": "none",
    }.get(mode, mode)


def to_json(result: EvalResult) -> str:
    data: dict[str, Any] = dataclasses.asdict(result)
    del data["lists"]
    data["input"]["skipped"] = dict(result.input.skipped)
    data["ndcg_ratio_exact"] = result.ndcg_ratio_exact
    data["ndcg_ratio_popularity"] = result.ndcg_ratio_popularity
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def threshold_failures(
    result: EvalResult,
    min_ratio_exact: float | None = None,
    min_ratio_popularity: float | None = None,
    max_seen_share: float | None = None,
) -> list[str]:
    """Every threshold given and not met, said in words (empty: all met)."""
    failures = []
    served = result.served.ndcg
    if min_ratio_exact is not None:
        if result.exact is None:
            failures.append(
                f"--min-ndcg-ratio-exact {min_ratio_exact}: no exact figure ({result.exact_note})"
            )
        else:
            failures.extend(_below(served, result.exact.ndcg, min_ratio_exact, "exact"))
    if min_ratio_popularity is not None:
        failures.extend(_below(served, result.popularity.ndcg, min_ratio_popularity, "popularity"))
    if max_seen_share is not None and result.served.seen_share > max_seen_share:
        failures.append(f"seen share {result.served.seen_share:.4f} > --max-seen-share {max_seen_share}")
    return failures


def _below(served: float, reference: float, minimum: float, name: str) -> list[str]:
    # A reference NDCG of 0 is beaten by any served NDCG above 0 (an infinite ratio).
    if (reference > 0 and served / reference >= minimum) or reference <= 0 < served:
        return []
    ratio = f"{served / reference:.3f}" if reference > 0 else "0/0"
    return [f"NDCG served / {name} = {ratio} < --min-ndcg-ratio-{name} {minimum}"]
