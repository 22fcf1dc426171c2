"""`recd eval`: split the dataset, load the training part through the API, ask Recommend for every
evaluated user, and score the answers beside the popularity baseline and the exact computation."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.config import Config
from server.ranking.model import RankingModel
from server.tools.evaluation.baselines import popularity_lists
from server.tools.evaluation.dataset import Dataset, InputReport, UnusableInput, read_dataset
from server.tools.evaluation.exact import ExactPipeline
from server.tools.evaluation.metrics import ListQuality, summarise
from server.tools.evaluation.serving import (
    Answer,
    EdgesMode,
    check_dimension,
    fresh_server,
    in_process_config,
    load_training,
    recommend_all,
    settle,
)
from server.tools.evaluation.split import Split, split_last_n
from server.tools.loading.load import LoadSummary
from server.validation import Limits


@dataclass
class EvalOptions:
    dataset: Path
    k: int = 10
    holdout: int = 5
    min_train: int = 5
    max_users: int | None = None
    seed: int = 0
    concurrency: int = 4
    address: str | None = None  # None: a fresh in-process server
    budget_scale: float = 1.0  # the in-process server's time budgets, multiplied
    edges: EdgesMode = "train"
    batch_size: int = 2000
    progress: bool = True


@dataclass
class ServedFigures:
    """What only the served answers have: provenance, degradation, failures."""

    answers: int
    # share of answer slots each source proposed (a slot proposed by two sources counts for both)
    source_share: dict[str, float]
    degraded_answers: int
    degraded_reasons: dict[str, int]
    failed: int
    failure_example: str | None


@dataclass
class EvalResult:
    dataset: str
    target: str
    k: int
    holdout: int
    min_train: int
    max_users: int | None
    seed: int
    edges: str
    model_version: str
    input: InputReport
    catalogue: int
    users_total: int
    users_evaluated: int
    users_skipped: dict[str, int]
    training_interactions: int
    served: ListQuality
    served_figures: ServedFigures
    popularity: ListQuality
    exact: ListQuality | None
    exact_note: str
    # exact computation with other ranking models on the same server (tune), by model version
    exact_with: dict[str, ListQuality] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # recommender ("served", "exact", "popularity") -> user -> items, best first (not in the JSON report)
    lists: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False)

    @property
    def ndcg_ratio_exact(self) -> float | None:
        return _ratio(self.served.ndcg, self.exact.ndcg) if self.exact is not None else None

    @property
    def ndcg_ratio_popularity(self) -> float | None:
        return _ratio(self.served.ndcg, self.popularity.ndcg)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def prepare(options: EvalOptions, config: Config) -> tuple[Dataset, Split]:
    """Read and split the dataset; UnusableInput when nothing can be evaluated."""
    limits = Limits.of(config)
    dataset = read_dataset(options.dataset, limits)
    split = split_last_n(
        dataset.histories, options.holdout, options.min_train, options.max_users, options.seed
    )
    if not split.evaluated:
        reasons = ", ".join(f"{n} {reason}" for reason, n in split.skipped.most_common())
        raise UnusableInput(
            f"{options.dataset}: no user can be evaluated ({len(dataset.histories)} users: {reasons}); "
            f"a user needs at least --holdout + --min-train = {options.holdout + options.min_train} "
            "interactions with a held-out item not seen before"
        )
    return dataset, split


async def evaluate(options: EvalOptions, config: Config, target: str | None = None) -> EvalResult:
    dataset, split = prepare(options, config)
    return await evaluate_split(dataset, split, options, config, target)


async def evaluate_split(
    dataset: Dataset,
    split: Split,
    options: EvalOptions,
    config: Config,
    target: str | None = None,
    other_models: Sequence[RankingModel] = (),
) -> EvalResult:
    k = options.k
    users = split.evaluated
    user_ids = [u.user_id for u in users]
    train = split.training_interactions()
    seconds: dict[str, float] = {}
    exact_lists: dict[str, list[str]] | None = None
    exact_with: dict[str, dict[str, list[str]]] = {}
    if options.address is not None:
        address = options.address
        await check_dimension(address, dataset.dim)
        say(options, f"loading {len(train)} training interactions into {address}")
        started = time.perf_counter()
        _check_load(
            await load_training(address, dataset, train, options.edges, options.batch_size, options.progress)
        )
        seconds["load"] = time.perf_counter() - started
        answers, seconds["recommend"] = await _ask(address, user_ids, options)
        exact_note = f"not computed: the server at {address} is not in this process"
    else:
        server_config = in_process_config(config, dataset.dim, options.budget_scale)
        async with fresh_server(server_config) as server:
            say(options, f"loading {len(train)} training interactions into an in-process server")
            started = time.perf_counter()
            summary = await load_training(
                server.address, dataset, train, options.edges, options.batch_size, options.progress
            )
            _check_load(summary)
            await settle(server.recd)
            seconds["load"] = time.perf_counter() - started
            answers, seconds["recommend"] = await _ask(server.address, user_ids, options)
            started = time.perf_counter()
            pipeline = ExactPipeline(server.recd, dataset.item_ids)
            inputs = await pipeline.user_inputs(users)
            exact_lists = pipeline.top_k(inputs, server.recd.model, k)
            for model in other_models:
                exact_with[model.version] = pipeline.top_k(inputs, model, k)
            seconds["exact"] = time.perf_counter() - started
        exact_note = "same pipeline over the whole catalogue (exhaustive retrieval), in-process"
    catalogue = len(dataset.item_ids)
    served_lists = {u: list(a.item_ids) for u, a in answers.items()}
    popular = popularity_lists(train, users, k)
    lists = {"served": served_lists, "popularity": popular}
    if exact_lists is not None:
        lists["exact"] = exact_lists
    versions = sorted({a.model_version for a in answers.values() if a.model_version})
    return EvalResult(
        dataset=str(dataset.root),
        target=target or (f"recd at {options.address}" if options.address else "in-process server"),
        k=k,
        holdout=options.holdout,
        min_train=options.min_train,
        max_users=options.max_users,
        seed=options.seed,
        edges=options.edges,
        model_version=", ".join(versions) or "?",
        input=dataset.report,
        catalogue=catalogue,
        users_total=len(dataset.histories),
        users_evaluated=len(users),
        users_skipped=dict(split.skipped),
        training_interactions=len(train),
        served=summarise("served", served_lists, users, k, catalogue),
        served_figures=_served_figures(answers),
        popularity=summarise("popularity", popular, users, k, catalogue),
        exact=None if exact_lists is None else summarise("exact", exact_lists, users, k, catalogue),
        exact_note=exact_note,
        exact_with={
            v: summarise(f"exact ({v})", lists, users, k, catalogue) for v, lists in exact_with.items()
        },
        seconds=seconds,
        lists=lists,
    )


async def _ask(address: str, user_ids: list[str], options: EvalOptions) -> tuple[dict[str, Answer], float]:
    say(options, f"asking Recommend (k={options.k}) for {len(user_ids)} users")
    started = time.perf_counter()
    answers = await recommend_all(address, user_ids, options.k, options.concurrency, options.progress)
    return answers, time.perf_counter() - started


def _check_load(summary: LoadSummary) -> None:
    if not summary.ok:
        raise UnusableInput(f"the server refused part of the training data:\n{summary.describe()}")


def _served_figures(answers: Mapping[str, Answer]) -> ServedFigures:
    slots = 0
    by_source: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    degraded = failed = 0
    example = None
    for answer in answers.values():
        if answer.error is not None:
            failed += 1
            example = example or answer.error
            continue
        slots += len(answer.item_ids)
        for sources in answer.sources:
            by_source.update(sources)
        if answer.degraded:
            degraded += 1
            reasons.update(answer.degraded)
    return ServedFigures(
        answers=len(answers),
        source_share={
            name: by_source[name] / slots if slots else 0.0 for name in ("ANN", "GRAPH", "POPULAR")
        },
        degraded_answers=degraded,
        degraded_reasons=dict(reasons),
        failed=failed,
        failure_example=example,
    )


def say(options: EvalOptions, message: str) -> None:
    if options.progress:
        print(message, file=sys.stderr, flush=True)
