"""`recd bench filters`: filtered Recommend at 50%, 10%, 1% and 0.1% selectivity beside the unfiltered one.

One in-process frontend (`build_recd`, embedded backends, 20 in-process shards) holds the demo-shaped
catalogue plus a `sel` attribute whose values pass the given shares of the items. Warm users (a history
of 20 items from one neighbourhood) ask for k=10 with each filter, through the Recommend pipeline the gRPC
servicer runs (gRPC itself is left out: it costs the same with or without a filter). Per selectivity:

- which retrieval path ran with the configured `exact_filter_max_items`, then the same requests on the
  other path (forced by the threshold), so the two paths' costs sit side by side: that comparison is
  what the default threshold is from;
- the share of answer slots proposed by a personalised source (ANN or GRAPH) rather than only popular;
- recall@10 of the ANN candidates against the exact top-10 by similarity among the unseen items that pass
  the filter (brute force, FP32);
- latency (p50, p99) and server CPU per request (process CPU time: frontend and shard threads).

Then the shards' cost of a 10,000-label exclusion list (a heavy user's whole seen set) per query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from server import _core, requests
from server.config import Config, load_config
from server.domain import Interaction, ItemRecord, RecommendQuery, Retrieval, Source
from server.errors import RecdError
from server.pipeline.runner import Answer
from server.pipeline.stages import Batch, Selected
from server.runtime import Recd
from server.tools.bench.data import dataset_dir
from server.tools.bench.report import table
from server.wiring import build_recd

K = 10
CONCURRENCY = 4
HISTORY = 20
# value of the `sel` attribute -> share of the catalogue holding it (disjoint; the rest hold "rest").
SELECTIVITY = {"s50": 0.5, "s10": 0.1, "s1": 0.01, "s01": 0.001}
LABEL = {"s50": "50%", "s10": "10%", "s1": "1%", "s01": "0.1%"}


@dataclass
class Catalogue:
    ids: list[str]
    vectors: npt.NDArray[np.float32]  # unit rows, as the frontend stores them
    sel: npt.NDArray[np.str_]


@dataclass
class Run:
    selectivity: str
    mode: str  # "default" or "hnsw forced"
    paths: Counter[str]
    personalised: float
    recall: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    degraded: int


def _catalogue(items: int) -> tuple[Catalogue, list[ItemRecord]]:
    directory = dataset_dir(items, max(1000, items // 10), 64)
    table_ = pq.read_table(directory / "items.parquet", columns=["item_id", "embedding", "popularity"])
    ids = table_.column("item_id").to_pylist()
    flat = table_.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    popularity = table_.column("popularity").to_numpy()
    sel = np.full(len(ids), "rest", dtype=object)
    order = np.random.default_rng(23).permutation(len(ids))
    start = 0
    for value, share in SELECTIVITY.items():
        count = round(share * len(ids))
        sel[order[start : start + count]] = value
        start += count
    now_ms = int(time.time() * 1000)
    records = [
        ItemRecord(item_id, vectors[i], {"sel": str(sel[i])}, float(popularity[i]), now_ms)
        for i, item_id in enumerate(ids)
    ]
    return Catalogue(ids, vectors, sel.astype(str)), records


def _config() -> Config:
    config = load_config(environ={})
    config.dim = 64
    config.data_dir = None
    # Budgets wide enough that no request is cut short: the figures compare the work each path does.
    config.pipeline.budget_ms = 10_000.0
    config.pipeline.steps = {
        name: dataclasses.replace(step, budget_ms=step.budget_ms * 100)
        for name, step in config.pipeline.steps.items()
    }
    return config


async def _warm_users(recd: Recd, cat: Catalogue, n: int) -> dict[str, list[int]]:
    """n users, each with HISTORY items around one random anchor item."""
    rng = np.random.default_rng(5)
    users: dict[str, list[int]] = {}
    for u, anchor in enumerate(rng.choice(len(cat.ids), size=n, replace=False).tolist()):
        near = np.argpartition(-(cat.vectors @ cat.vectors[anchor]), 3 * HISTORY)[: 3 * HISTORY]
        history = rng.choice(near, size=HISTORY, replace=False).tolist()
        users[f"bench-user-{u}"] = history
    interactions = [
        Interaction(user, cat.ids[row], "view", 1.0, 0) for user, rows in users.items() for row in rows
    ]
    for start in range(0, len(interactions), 5000):
        await recd.recommender.record_interactions(interactions[start : start + 5000])
    return users


@dataclass(frozen=True, slots=True)
class Traced:
    answer: Answer
    selected: Selected  # every stage of the request, the ANN hits among them


async def _recommend(recd: Recd, user: str, allowed: dict[str, frozenset[str]]) -> Traced:
    """What Recommend runs, keeping the stages: the ANN hits are needed for the recall."""
    query = RecommendQuery(user, K, {}, frozenset(), dict(allowed), 0.0, False)
    deadline = time.monotonic() + recd.config.pipeline.budget_ms / 1000.0
    request = requests.recommend_request(query, recd.recommender.limits, deadline)
    selected, answers = await recd.recommender.recommend_pipeline.trace(Batch((request,)))
    if isinstance(answers[0], RecdError):
        raise answers[0]
    return Traced(answers[0], selected)


def _recall(cat: Catalogue, traced: Traced, history: list[int], passing: npt.NDArray[np.bool_]) -> float:
    candidates = traced.selected.ranked.filtered.candidates
    ann = next((h for h in candidates.hits if h.source == Source.ANN), None)
    if ann is None or not candidates.hydrated.has_vector[0]:
        return 0.0
    vector = candidates.hydrated.vectors[0]
    eligible = passing.copy()
    eligible[history] = False
    rows = np.flatnonzero(eligible)
    scores = cat.vectors[rows] @ vector
    best = rows[np.argpartition(-scores, K)[:K]] if len(rows) > K else rows
    ann_rows, ann_scores = ann.rows.row(0), ann.scores[: len(ann.rows.row(0))]
    retrieved = ann_rows[np.argsort(-ann_scores, kind="stable")[:K]]
    # ANN rows are catalogue rows; the catalogue was loaded in dataset order, so row == dataset index.
    return len(set(retrieved.tolist()) & set(best.tolist())) / max(1, min(K, len(rows)))


async def _run(recd: Recd, cat: Catalogue, users: dict[str, list[int]], value: str | None, mode: str) -> Run:
    allowed = {"sel": frozenset({value})} if value else {}
    passing = cat.sel == value if value else np.ones(len(cat.ids), dtype=np.bool_)
    names = list(users)
    for name in names[:16]:  # warm the path (and the filter's cache) before timing
        await _recommend(recd, name, allowed)
    latencies: list[float] = []
    contexts: list[tuple[str, Traced]] = []
    queue = list(names)

    async def worker() -> None:
        while queue:
            name = queue.pop()
            started = time.perf_counter()
            ctx = await _recommend(recd, name, allowed)
            latencies.append(time.perf_counter() - started)
            contexts.append((name, ctx))

    cpu_before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu_ms = (time.process_time() - cpu_before) / len(names) * 1e3
    slots = [item for _, ctx in contexts for item in ctx.answer.items]
    for item in slots:
        row = recd.items.row_of(item.item_id)
        assert row is not None and passing[row], f"{item.item_id} does not pass {allowed}"
    personal = sum(Source.ANN in i.sources or Source.GRAPH in i.sources for i in slots) / max(1, len(slots))
    recalls = [_recall(cat, ctx, users[name], passing) for name, ctx in contexts]
    lat = np.asarray(latencies) * 1e3
    return Run(
        LABEL.get(value or "", "none (100%)"),
        mode,
        Counter(Retrieval(ctx.answer.retrieval).name for _, ctx in contexts),
        personal,
        float(np.mean(recalls)),
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        cpu_ms,
        sum(1 for _, ctx in contexts if ctx.answer.coverage.degraded),
    )


async def _exclusion_cost(recd: Recd, cat: Catalogue, queries: int = 64) -> list[list[object]]:
    """The shards' search with a 10,000-label exclusion list per query (half held by the catalogue, as a
    heavy user's seen set is) beside none, through the router: ms of wall and CPU per query."""
    rng = np.random.default_rng(8)
    labels = _core.stable_hash64(cat.ids)
    q = cat.vectors[rng.choice(len(cat.ids), size=queries, replace=False)]
    c = recd.config.pipeline.candidates
    per_shard_k = recd.router.per_shard_k(c.ann_k, c.shard_k_factor, c.shard_k)
    ef = recd.config.shards.index.ef_search
    held = min(5000, len(labels) // 2)
    seen = [
        np.unique(
            np.concatenate(
                [
                    rng.choice(labels, held, replace=False),
                    rng.integers(0, 2**63, 10_000 - held, dtype=np.uint64),
                ]
            )
        )
        for _ in range(queries)
    ]
    rows: list[list[object]] = []
    for name, exclude in (("no exclusions", None), ("10,000 excluded labels per query", seen)):
        await recd.router.search(q, c.ann_k, per_shard_k, ef, exclude, 60.0)  # warm
        best_wall, best_cpu = float("inf"), float("inf")
        for _ in range(3):
            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, queries, 8):  # micro-batches of 8, as under load
                part = exclude[start : start + 8] if exclude is not None else None
                await recd.router.search(q[start : start + 8], c.ann_k, per_shard_k, ef, part, 60.0)
            best_wall = min(best_wall, (time.perf_counter() - wall) / queries * 1e3)
            best_cpu = min(best_cpu, (time.process_time() - cpu) / queries * 1e3)
        rows.append([name, f"{best_wall:.2f}", f"{best_cpu:.2f}"])
    return rows


async def _bench(items: int, n_users: int) -> tuple[str, dict[str, float]]:
    config = _config()
    cat, records = _catalogue(items)
    recd = build_recd(config)
    try:
        started = time.monotonic()
        for start in range(0, len(records), 5000):
            await recd.catalog.upsert_items(records[start : start + 5000])
        load_s = time.monotonic() - started
        users = await _warm_users(recd, cat, n_users)
        ann = recd.recommender.ann
        default = ann.params
        threshold = default.exact_max_items
        runs = [await _run(recd, cat, users, None, "default")]
        for value in SELECTIVITY:
            runs.append(await _run(recd, cat, users, value, "default"))
            # The other path on the same filter: what the threshold chose against.
            assert ann.exact_filter is not None
            exact = ann.exact_filter.applies({"sel": frozenset({value})}, threshold)
            ann.params = dataclasses.replace(default, exact_max_items=0 if exact else len(cat.ids))
            try:
                runs.append(await _run(recd, cat, users, value, "HNSW forced" if exact else "exact forced"))
            finally:
                ann.params = default
        exclusion_rows = await _exclusion_cost(recd, cat)
    finally:
        await recd.close()
    base = runs[0]
    body = table(
        [
            "filter passes",
            "threshold",
            "path",
            "personalised slots",
            "recall@10 of retrieval",
            "p50 ms",
            "p99 ms",
            "CPU ms / request",
            "CPU vs unfiltered",
        ],
        [
            [
                r.selectivity,
                f"{threshold:,}" if r.mode == "default" else r.mode,
                ", ".join(f"{p} {n}" if len(r.paths) > 1 else p for p, n in r.paths.items()),
                f"{r.personalised:.1%}",
                f"{r.recall:.3f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.cpu_ms:.2f}",
                f"{r.cpu_ms / base.cpu_ms:.2f}x",
            ]
            for r in runs
        ],
    )
    degraded = sum(r.degraded for r in runs)
    body += (
        f"\n\n{items:,} items of dimension 64 (the demo-shaped catalogue, {load_s:.0f} s to load), 20 in-process"
        f" shards (ef {config.shards.index.ef_search}), ann_k {config.pipeline.candidates.ann_k};"
        f" a `sel` attribute passing 50%, 10%, 1% or 0.1% of the items; {n_users} warm users ({HISTORY} items"
        f" seen, from one neighbourhood), each asking once for k={K} per row, {CONCURRENCY} at a time, through"
        " the Recommend pipeline in process (gRPC left out: it costs the same with or without a filter)."
        " Personalised slots: answer items proposed by ANN or GRAPH (the rest came from the popular list)."
        " Recall@10: the ANN candidates' top 10 against the exact top 10 by similarity among the unseen items"
        " that pass the filter. CPU: process CPU time per request (frontend and shard threads)."
        f" Budgets raised so no request was cut short ({degraded} degraded answers in all)."
        " `threshold` is pipeline.candidates.exact_filter_max_items; each filtered row is followed by the"
        " same requests on the other path (threshold 0: HNSW forced; threshold = catalogue size: exact"
        " forced), which is what the default threshold was chosen from."
    )
    body += "\n\nThe shards' cost of a heavy user's seen set (router search, k 200, micro-batches of 8):\n\n"
    body += table(["exclusions", "wall ms / query", "CPU ms / query"], exclusion_rows)
    result: dict[str, float] = {}
    for r in runs:
        key = f"{r.selectivity}_{r.mode.split()[0].lower()}"
        result |= {
            f"{key}_personalised": r.personalised,
            f"{key}_recall": r.recall,
            f"{key}_cpu_ms": r.cpu_ms,
            f"{key}_p50_ms": r.p50_ms,
        }
    return body, result


def run_filters_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    return asyncio.run(_bench(20_000 if quick else 200_000, 50 if quick else 200))
