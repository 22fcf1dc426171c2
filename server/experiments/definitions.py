"""Experiments as the request path sees them: checked definitions, and the parameters a variant may change.

A variant overrides request-path parameters by name (OVERRIDES). Most name a config key and are
type-checked like the config file. Some ride on each request (PER_REQUEST): `model_version` picks the
loaded ranking model that ranks, `diversity` is the diversity of requests that ask for none, and the
ANN source's retrieval parameters (ef, k, per-shard k, the exact-filter threshold); a variant that
changes only these shares the default pipeline and its batches. The others (sources, graph and popular
sizes, the MMR pool) make the variant a pipeline of its own, built from a copy of the config with them
set, and batched apart.

Several experiments may run at once, each user drawn into each independently (their own salts). Two
enabled experiments may not override the same parameter: a user drawn into both could not be served
both variants, and which one won would depend on the order of a list.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.config import Config, ConfigError, ExperimentConfig, with_overrides

# Override name -> the config key it sets (None: applied per request, see the module doc).
OVERRIDES: Mapping[str, str | None] = {
    "model_version": None,
    "diversity": None,
    "ef_search": "shards.index.ef_search",
    "sources": "pipeline.recommend_sources",
    "mmr_pool": "pipeline.mmr_pool",
    "ann_k": "pipeline.candidates.ann_k",
    "shard_k": "pipeline.candidates.shard_k",
    "shard_k_factor": "pipeline.candidates.shard_k_factor",
    "graph_seeds": "pipeline.candidates.graph_seeds",
    "graph_hops": "pipeline.candidates.graph_hops",
    "graph_limit_per_hop": "pipeline.candidates.graph_limit_per_hop",
    "graph_min_score": "pipeline.candidates.graph_min_score",
    "popular_k": "pipeline.candidates.popular_k",
    "popular_for_warm_users": "pipeline.candidates.popular_for_warm_users",
    "exact_filter_max_items": "pipeline.candidates.exact_filter_max_items",
}

# Overrides that ride on each request rather than making a pipeline of their own: a variant that changes
# only these batches together with the others (the rank step ranks each model version apart, the ANN
# source searches each set of retrieval parameters apart).
ANN_OVERRIDES = frozenset({"ef_search", "ann_k", "shard_k", "shard_k_factor", "exact_filter_max_items"})
PER_REQUEST = frozenset({"model_version", "diversity"}) | ANN_OVERRIDES

MAX_NAME_BYTES = 64


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    share: float  # of the experiment's users: the weights normalised
    overrides: Mapping[str, Any]
    users: frozenset[str]


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    salt: str
    traffic: float
    enabled: bool
    variants: tuple[Variant, ...]
    # Upper ends of the variants' cumulative shares, aligned with `variants` (the last one is 1.0).
    bounds: tuple[float, ...]

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


def parse(
    configs: Sequence[ExperimentConfig], base: Config, loaded_models: Sequence[str] | None, where: str
) -> tuple[Experiment, ...]:
    """Checked experiments (ConfigError naming `where`, the experiment and what to fix): names unique
    and short, shares sane, every override known, of the right type and valid for `base`, model
    versions among `loaded_models` (None: not checked), no parameter overridden by two enabled experiments."""
    problems: list[str] = []
    experiments = []
    seen_names: set[str] = set()
    for i, c in enumerate(configs):
        at = f"{where}[{i}]"
        found = _experiment_problems(c, at, seen_names)
        found += _override_problems(c, base, loaded_models, at)
        # Positions alone are ambiguous: the file's definitions follow the config's inline ones.
        problems += [f"experiment {c.name!r}: {p}" for p in found]
        seen_names.add(c.name)
        if not found:
            experiments.append(_build(c))
    problems += _conflicts(experiments)
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(experiments)


def _experiment_problems(c: ExperimentConfig, at: str, seen: set[str]) -> list[str]:
    found = []
    if not _valid_name(c.name):
        found.append(f"{at}.name must be 1..{MAX_NAME_BYTES} characters without '=' or ';', got {c.name!r}")
    elif c.name in seen:
        found.append(f"{at}.name {c.name!r} is used by another experiment")
    if not 0.0 <= c.traffic <= 1.0:
        found.append(f"{at}.traffic must be a share in [0, 1], got {c.traffic}")
    if not c.variants:
        found.append(f"{at} ({c.name}) needs at least one variant")
    names = [v.name for v in c.variants]
    for j, v in enumerate(c.variants):
        if not _valid_name(v.name):
            found.append(f"{at}.variants[{j}].name must be 1..{MAX_NAME_BYTES} characters without '=' or ';'")
        elif names.count(v.name) > 1:
            found.append(f"{at}.variants[{j}].name {v.name!r} is used twice in {c.name}")
        if not (v.weight >= 0 and math.isfinite(v.weight)):
            found.append(f"{at}.variants[{j}].weight must be a finite number >= 0, got {v.weight}")
    if c.variants and not sum(v.weight for v in c.variants) > 0:
        found.append(f"{at} ({c.name}): the variants' weights add up to 0")
    listed: dict[str, str] = {}
    for v in c.variants:
        for user in v.users:
            if listed.setdefault(user, v.name) != v.name:
                found.append(f"{at}: user {user!r} is allow-listed in variants {listed[user]} and {v.name}")
    return found


def _override_problems(
    c: ExperimentConfig, base: Config, loaded_models: Sequence[str] | None, at: str
) -> list[str]:
    found = []
    for j, v in enumerate(c.variants):
        where = f"{at}.variants[{j}].overrides"
        unknown = sorted(set(v.overrides) - set(OVERRIDES))
        if unknown:
            found.append(f"{where}: unknown parameters {unknown}; known: {sorted(OVERRIDES)}")
            continue
        version = v.overrides.get("model_version")
        if version is not None and loaded_models is not None and str(version) not in loaded_models:
            found.append(f"{where}.model_version {version!r} is not loaded; loaded: {sorted(loaded_models)}")
        diversity = v.overrides.get("diversity")
        if diversity is not None and (
            isinstance(diversity, bool) or not isinstance(diversity, int | float) or not 0 <= diversity <= 1
        ):
            found.append(f"{where}.diversity must be a number in [0, 1], got {diversity!r}")
        try:
            config_for(base, v.overrides, where)
        except ConfigError as exc:
            found.append(str(exc))
    return found


def _conflicts(experiments: Sequence[Experiment]) -> list[str]:
    owner: dict[str, str] = {}
    found = []
    for e in experiments:
        if not e.enabled:
            continue
        for name in sorted({k for v in e.variants for k in v.overrides}):
            other = owner.setdefault(name, e.name)
            if other != e.name:
                found.append(
                    f"experiments {other} and {e.name} both override {name}: a user drawn into both could "
                    "not be served both; run them one after the other, or as one experiment with more "
                    "variants"
                )
    return found


def _build(c: ExperimentConfig) -> Experiment:
    total = sum(v.weight for v in c.variants)
    variants = tuple(
        Variant(v.name, v.weight / total, dict(v.overrides), frozenset(v.users)) for v in c.variants
    )
    bounds, running = [], 0.0
    for v in variants:
        running += v.share
        bounds.append(running)
    bounds[-1] = 1.0  # rounding must never leave a hash above the last bound
    return Experiment(c.name, c.salt or c.name, c.traffic, c.enabled, variants, tuple(bounds))


def _valid_name(name: str) -> bool:
    return 0 < len(name.encode()) <= MAX_NAME_BYTES and "=" not in name and ";" not in name


def config_for(base: Config, overrides: Mapping[str, Any], where: str) -> Config:
    """`base` with the overrides that name config keys applied (the request-level ones are not config)."""
    keyed: dict[str, Any] = {}
    for name, value in overrides.items():
        key = OVERRIDES.get(name)
        if key is not None:
            keyed[key] = value
    if not keyed:
        return base
    return with_overrides(base, keyed, where)


def overrides_key(overrides: Mapping[str, Any]) -> str:
    """One string per distinct set of overrides: arms that change the same parameters to the same values
    share one pipeline (and batch together)."""
    return json.dumps(sorted(overrides.items()), separators=(",", ":"), default=str)
