"""`recd tune`: fit the ranking model's weights on a validation split, by coordinate ascent on NDCG@k of
the exact offline computation, and write them as a new versioned model file.

The validation split is a further leave-last-N-out inside the training part of the eval split, so the
test interactions play no part in the fit. A fresh server is loaded with what precedes the validation
interactions; the features of a candidate pool per validation user (similarity, graph, popularity,
freshness: see ExactPipeline.pool) are computed once and re-scored for every weighting tried. The
figures reported for validation come from the full exact computation, not the pool; should the tuned
weights not beat the starting ones there, the starting weights are kept (and the report says so).

Test figures: served through a fresh server loaded with the whole training part, once with the
starting model and once with the tuned file as `ranking.model_file` (`--test served`), or the exact
computation of both models on one server (`--test exact`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml

from server import _core
from server.config import Config
from server.ranking.model import SIDE_FEATURES, RankingModel, load_model
from server.tools.evaluation.dataset import UnusableInput
from server.tools.evaluation.exact import ExactPipeline, PoolFeatures, weight_vector
from server.tools.evaluation.metrics import summarise
from server.tools.evaluation.report import quality_table
from server.tools.evaluation.run import EvalOptions, EvalResult, evaluate_split, prepare, say
from server.tools.evaluation.serving import fresh_server, in_process_config, load_training, settle
from server.tools.evaluation.split import split_last_n

WEIGHT_NAMES = ("similarity", *SIDE_FEATURES)
# Values tried for a weight: multiples of the current one, and fixed points so a zero weight can grow.
_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.5, 2.0, 4.0)
_FIXED = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
_MIN_GAIN = 1e-9


@dataclass
class TuneOptions:
    out: Path
    validation: int
    rounds: int = 4
    pool: int = 200
    test: Literal["served", "exact"] = "served"


@dataclass
class Step:
    round: int
    weight: str
    value: float
    ndcg: float


@dataclass
class TuneResult:
    dataset: str
    out: str
    k: int
    holdout: int
    validation: int
    validation_users: int
    base_version: str
    tuned_version: str
    base_weights: dict[str, float]
    tuned_weights: dict[str, float]
    kept_base: bool
    validation_ndcg: dict[str, float]  # model version -> exact NDCG@k on the validation split
    pool_ndcg: dict[str, float]  # the same on the candidate pool (what the search optimised)
    steps: list[Step]
    test_mode: str
    test_evals: list[EvalResult]
    seconds: dict[str, float] = field(default_factory=dict)


def pool_ndcg(pool: PoolFeatures, weights: npt.NDArray[np.float32], k: int) -> float:
    """Mean NDCG@k when each user's pool is ranked by features @ weights (binary relevance)."""
    users, width = pool.valid.shape
    kk = min(k, width)
    if users == 0 or kk == 0:
        return 0.0
    scores = pool.features @ weights.astype(np.float32)
    scores[~pool.valid] = -np.inf
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(discounts)[np.clip(pool.relevant_count, 1, k) - 1]
    # The Rust core's top-k: -inf (padding) is never picked and comes back as position -1.
    top, _ = _core.topk_rows(np.ascontiguousarray(scores, dtype=np.float32), kk)
    hits = np.take_along_axis(pool.relevant, np.maximum(top, 0), axis=1) & (top >= 0)
    dcg = (hits * discounts[:kk]).sum(axis=1)
    return float(np.mean(dcg / ideal))


def coordinate_ascent(
    pool: PoolFeatures, start: npt.NDArray[np.float32], k: int, rounds: int
) -> tuple[npt.NDArray[np.float32], float, list[Step]]:
    """One weight at a time, the value (of a small grid around it) with the best pool NDCG; rounds
    until no weight moves. Only strict gains move a weight, so the result is never worse than `start`."""
    weights = start.astype(np.float32).copy()
    best = pool_ndcg(pool, weights, k)
    steps = [Step(0, "start", 0.0, best)]
    for round_number in range(1, rounds + 1):
        moved = False
        for j, name in enumerate(WEIGHT_NAMES):
            current = float(weights[j])
            values = sorted({round(current * f, 6) for f in _FACTORS} | set(_FIXED))
            for value in values:
                if value == current:
                    continue
                trial = weights.copy()
                trial[j] = value
                if not trial.any():
                    continue
                score = pool_ndcg(pool, trial, k)
                if score > best + _MIN_GAIN:
                    best, weights, moved = score, trial, True
            if float(weights[j]) != current:
                steps.append(Step(round_number, name, float(weights[j]), best))
        if not moved:
            break
    return weights, best, steps


def tuned_model(base: RankingModel, weights: npt.NDArray[np.float32], version: str) -> RankingModel:
    w = [float(x) for x in weights]
    return RankingModel(version, w[0], (w[1], w[2], w[3]), base.freshness_half_life_s)


def model_version(weights: npt.NDArray[np.float32], fingerprint: str, today: dt.date | None = None) -> str:
    today = today or dt.datetime.now(dt.UTC).date()
    digest = hashlib.blake2b(
        (fingerprint + json.dumps([round(float(x), 6) for x in weights])).encode(), digest_size=4
    ).hexdigest()
    return f"tuned-{today:%Y%m%d}-{digest}"


def write_model_file(path: Path, model: RankingModel, comment: list[str]) -> None:
    """The same format as server/ranking/default_model.yaml, with `comment` lines at the top."""
    body = {
        "version": model.version,
        "weights": {
            name: round(float(w), 6) for name, w in zip(WEIGHT_NAMES, weight_vector(model), strict=True)
        },
        "freshness_half_life_days": round(model.freshness_half_life_s / 86400.0, 6),
    }
    header = "".join(f"# {line}\n" for line in comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))


async def tune(options: EvalOptions, tune_options: TuneOptions, config: Config, target: str) -> TuneResult:
    if options.address is not None:
        raise UnusableInput("recd tune needs an in-process server (the exact computation); drop --address")
    started = time.perf_counter()
    dataset, split = prepare(options, config)
    validation = split_last_n(
        split.train, tune_options.validation, options.min_train, options.max_users, options.seed
    )
    if not validation.evaluated:
        raise UnusableInput(
            f"no user has {tune_options.validation + options.min_train} training interactions left for "
            f"a validation split of {tune_options.validation}; lower --validation or --min-train"
        )
    k = options.k
    catalogue = len(dataset.item_ids)
    seconds: dict[str, float] = {}
    async with fresh_server(in_process_config(config, dataset.dim, options.budget_scale)) as server:
        say(options, f"tuning on {len(validation.evaluated)} validation users")
        summary = await load_training(
            server.address,
            dataset,
            validation.training_interactions(),
            options.edges,
            options.batch_size,
            options.progress,
        )
        if not summary.ok:
            raise UnusableInput(f"the server refused part of the training data:\n{summary.describe()}")
        await settle(server.recd)
        base = server.recd.model
        pipeline = ExactPipeline(server.recd, dataset.item_ids)
        inputs = await pipeline.user_inputs(validation.evaluated)
        pool = pipeline.pool(inputs, base, tune_options.pool)
        seconds["validation_load_and_features"] = time.perf_counter() - started
        search_started = time.perf_counter()
        start = weight_vector(base)
        weights, _, steps = coordinate_ascent(pool, start, k, tune_options.rounds)
        seconds["search"] = time.perf_counter() - search_started
        fingerprint = f"{dataset.root.resolve()}:{k}:{options.holdout}:{tune_options.validation}"
        candidate = tuned_model(base, weights, model_version(weights, fingerprint))
        users = validation.evaluated
        base_q = summarise(base.version, pipeline.top_k(inputs, base, k), users, k, catalogue)
        tuned_q = summarise(candidate.version, pipeline.top_k(inputs, candidate, k), users, k, catalogue)
    kept_base = tuned_q.ndcg < base_q.ndcg
    if kept_base:
        weights = start
        candidate = tuned_model(base, weights, model_version(weights, fingerprint))
        tuned_q = dataclasses.replace(base_q, name=candidate.version)
    today = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    write_model_file(
        tune_options.out,
        candidate,
        [
            f"Tuned by `recd tune` on {dataset.root} ({today}), from {base.version}.",
            f"Coordinate ascent on NDCG@{k} of the exact offline computation over a validation split: each",
            f"user's last {tune_options.validation} interactions inside the training part "
            f"({len(users)} users); the test hold-out (the last {options.holdout}) was not used.",
            f"Validation NDCG@{k}: {tuned_q.ndcg:.4f} (starting model {base_q.ndcg:.4f})"
            + ("; no weighting tried beat the starting one, so its weights are kept." if kept_base else "."),
        ],
    )
    tuned = load_model(tune_options.out)  # what a server will read: proves the file loads
    say(options, f"wrote {tune_options.out} ({tuned.version}); measuring both models on the test split")
    test_started = time.perf_counter()
    if tune_options.test == "served":
        tuned_config = copy.deepcopy(config)
        tuned_config.ranking.model_file = str(tune_options.out)
        test_evals = [
            await evaluate_split(dataset, split, options, config, target),
            await evaluate_split(dataset, split, options, tuned_config, target),
        ]
    else:
        test_evals = [await evaluate_split(dataset, split, options, config, target, other_models=[tuned])]
    seconds["test"] = time.perf_counter() - test_started
    return TuneResult(
        dataset=str(dataset.root),
        out=str(tune_options.out),
        k=k,
        holdout=options.holdout,
        validation=tune_options.validation,
        validation_users=len(users),
        base_version=base.version,
        tuned_version=tuned.version,
        base_weights=dict(zip(WEIGHT_NAMES, map(float, start), strict=True)),
        tuned_weights=dict(zip(WEIGHT_NAMES, map(float, weight_vector(tuned)), strict=True)),
        kept_base=kept_base,
        validation_ndcg={base.version: base_q.ndcg, tuned.version: tuned_q.ndcg},
        pool_ndcg={base.version: pool_ndcg(pool, start, k), tuned.version: pool_ndcg(pool, weights, k)},
        steps=steps,
        test_mode=tune_options.test,
        test_evals=test_evals,
        seconds=seconds,
    )


def figures_on_test(result: TuneResult) -> dict[str, dict[str, float | None]]:
    """Per model version: test NDCG/HR served (None when not served with it) and exact NDCG."""
    base, tuned = result.base_version, result.tuned_version
    out: dict[str, dict[str, float | None]] = {}
    first = result.test_evals[0]
    out[base] = {
        "served_ndcg": first.served.ndcg,
        "served_hr": first.served.hr,
        "exact_ndcg": first.exact.ndcg if first.exact else None,
    }
    if len(result.test_evals) > 1:
        second = result.test_evals[1]
        out[tuned] = {
            "served_ndcg": second.served.ndcg,
            "served_hr": second.served.hr,
            "exact_ndcg": second.exact.ndcg if second.exact else None,
        }
    else:
        exact = first.exact_with.get(tuned)
        out[tuned] = {"served_ndcg": None, "served_hr": None, "exact_ndcg": exact.ndcg if exact else None}
    return out


def tune_markdown(result: TuneResult) -> str:
    r = result
    k = r.k
    figures = figures_on_test(r)
    lines = [
        f"# recd tune: {r.dataset}",
        "",
        f"Wrote `{r.out}`: model `{r.tuned_version}`, tuned from `{r.base_version}` by coordinate ascent on "
        f"NDCG@{k} of the exact offline computation over a validation split (each user's last "
        f"{r.validation} interactions inside the training part; {r.validation_users} users). Test: each "
        f"user's last {r.holdout} interactions, never seen while tuning.",
    ]
    if r.kept_base:
        lines.append("No weighting tried beat the starting model on validation: its weights are kept.")
    lines.extend(["", "| weight | " + " | ".join(f"`{v}`" for v in (r.base_version, r.tuned_version)) + " |"])
    lines.append("|---|---:|---:|")
    for name in WEIGHT_NAMES:
        lines.append(f"| {name} | {r.base_weights[name]:.4g} | {r.tuned_weights[name]:.4g} |")
    lines.extend(
        [
            "",
            f"| model | validation NDCG@{k} (exact) | test NDCG@{k} served | test HR@{k} served "
            f"| test NDCG@{k} exact |",
            "|---|---:|---:|---:|---:|",
        ]
    )
    for version in (r.base_version, r.tuned_version):
        f = figures[version]
        lines.append(
            f"| `{version}` | {r.validation_ndcg[version]:.4f} | {_fmt(f['served_ndcg'])} | "
            f"{_fmt(f['served_hr'])} | {_fmt(f['exact_ndcg'])} |"
        )
    lines.append("")
    if r.test_mode == "served":
        lines.append(
            "Test figures: served through a fresh in-process server loaded with the training part, one "
            "per model (the tuned one through `ranking.model_file`); exact: the same pipeline over the "
            "whole catalogue."
        )
    else:
        lines.append(
            "Test figures: the exact computation of both models on one server (`--test exact`); only the "
            "starting model was served."
        )
    first = r.test_evals[0]
    lines.extend(["", f"Popularity baseline on the test split: NDCG@{k} {first.popularity.ndcg:.4f}.", ""])
    rows = [(f"served, `{e.model_version}`", e.served) for e in r.test_evals]
    lines.extend(quality_table(rows, k))
    lines.append("")
    lines.append("Timing: " + ", ".join(f"{name} {s:.1f} s" for name, s in r.seconds.items()) + ".")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def tune_json(result: TuneResult) -> str:
    data: dict[str, Any] = dataclasses.asdict(result)
    for i, e in enumerate(result.test_evals):
        del data["test_evals"][i]["lists"]
        data["test_evals"][i]["input"]["skipped"] = dict(e.input.skipped)
    data["test_figures"] = figures_on_test(result)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
