"""Per-variant outcomes of one experiment, summed per unit (user) from the exposure log.

The unit of analysis is the user, not the impression: one user's impressions are not independent (the
same taste, the same session), so each metric is summed per user and the report's intervals come from
the per-user sums (server/experiments/stats.py, delta method). What leaves here are those sums, enough
for every interval and test the report computes, whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.domain import Exposure, Outcome
from server.experiments.assignment import parse_tag
from server.experiments.definitions import Experiment
from server.experiments.stats import UnitTotals

OTHER = "other"


@dataclass(frozen=True, slots=True)
class VariantOutcomes:
    variant: str
    expected_share: float  # of the experiment's users (its weight normalised)
    units: int  # users served by the variant in the period
    answers: int
    impressions: int
    distinct_items: int  # items the variant served at least once
    # Per action (the named outcome actions, then "other"): x = a user's impressions, y = their
    # interactions attributed to the variant (one per item, answer and action).
    actions: Mapping[str, UnitTotals]
    latency_ms: UnitTotals  # x = a user's answers, y = the sum of their latencies
    diversity: UnitTotals  # x = a user's answers, y = the sum of their answers' diversity
    # Of `units`, those in the variant's allow-list: served by it whatever the hash says, so left out of
    # the sample-ratio check.
    forced_units: int = 0


@dataclass(frozen=True, slots=True)
class ExperimentOutcomes:
    experiment: str
    enabled: bool
    traffic: float
    since_ms: int
    catalogue_items: int
    variants: tuple[VariantOutcomes, ...]


@dataclass
class _Unit:
    answers: int = 0
    impressions: int = 0
    latency_ms: float = 0.0
    diversity: float = 0.0
    actions: dict[str, int] = field(default_factory=dict)


def summarise(
    experiment: Experiment,
    exposures: Sequence[Exposure],
    outcomes: Sequence[Outcome],
    outcome_actions: Sequence[str],
    since_ms: int,
    catalogue_items: int,
) -> ExperimentOutcomes:
    names = [v.name for v in experiment.variants]
    units: dict[str, dict[str, _Unit]] = {name: {} for name in names}
    served: dict[str, set[str]] = {name: set() for name in names}
    for e in exposures:
        variant = _variant_in(e.arm, experiment.name)
        if variant not in units:  # outside the experiment, or a variant it no longer has
            continue
        unit = units[variant].setdefault(e.user_id, _Unit())
        unit.answers += 1
        unit.impressions += len(e.item_ids)
        unit.latency_ms += e.latency_ms
        unit.diversity += e.diversity
        served[variant].update(e.item_ids)
    actions = [*dict.fromkeys(outcome_actions), OTHER]
    counted: set[tuple[str, int, str, str]] = set()
    for o in outcomes:
        variant = _variant_in(o.arm, experiment.name)
        found = units.get(variant or "", {}).get(o.user_id)
        action = o.action if o.action in actions else OTHER
        once = (o.user_id, o.served_at_ms, o.item_id, action)
        if found is None or once in counted:  # its answer is older than the period, or counted already
            continue
        counted.add(once)
        found.actions[action] = found.actions.get(action, 0) + 1
    return ExperimentOutcomes(
        experiment.name,
        experiment.enabled,
        experiment.traffic,
        since_ms,
        catalogue_items,
        tuple(
            _variant(
                v.name,
                v.share,
                list(units[v.name].values()),
                len(served[v.name]),
                actions,
                sum(1 for user in units[v.name] if user in v.users),
            )
            for v in experiment.variants
        ),
    )


def _variant(
    name: str, share: float, units: list[_Unit], distinct: int, actions: list[str], forced: int
) -> VariantOutcomes:
    answers = np.array([u.answers for u in units], np.float64)
    impressions = np.array([u.impressions for u in units], np.float64)
    return VariantOutcomes(
        name,
        share,
        len(units),
        int(answers.sum()),
        int(impressions.sum()),
        distinct,
        {
            a: UnitTotals.of(impressions, np.array([u.actions.get(a, 0) for u in units], np.float64))
            for a in actions
        },
        UnitTotals.of(answers, np.array([u.latency_ms for u in units], np.float64)),
        UnitTotals.of(answers, np.array([u.diversity for u in units], np.float64)),
        forced,
    )


def _variant_in(arm: str, experiment: str) -> str | None:
    for e, v in parse_tag(arm):
        if e == experiment:
            return v
    return None
