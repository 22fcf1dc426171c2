"""Tests of server/experiments/outcomes.py on hand-made exposure logs: per-variant users, answers,
impressions, distinct items, and per-user action counts with repeated actions counted once."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import Config, ExperimentConfig, VariantConfig
from server.domain import Exposure, Outcome
from server.experiments.definitions import Experiment, parse
from server.experiments.outcomes import OTHER, summarise
from server.experiments.stats import UnitTotals

ACTIONS = ["click", "purchase"]


def totals(x: list[float], y: list[float]) -> UnitTotals:
    return UnitTotals.of(np.array(x, np.float64), np.array(y, np.float64))


def experiment(enabled: bool = True) -> Experiment:
    (e,) = parse(
        [
            ExperimentConfig(
                "exp", traffic=0.5, enabled=enabled, variants=[VariantConfig("a", 1), VariantConfig("b", 3)]
            )
        ],
        Config(data_dir=None),
        None,
        "t",
    )
    return e


def exposure(
    user: str, at: int, items: tuple[str, ...], arm: str, latency: float, diversity: float
) -> Exposure:
    return Exposure(user, at, items, arm, latency, diversity)


EXPOSURES = [
    exposure("u1", 100, ("i1", "i2"), "exp=a", 10.0, 0.5),
    exposure("u1", 200, ("i2", "i3"), "other=x;exp=a", 20.0, 0.7),
    exposure("u2", 110, ("i1", "i4", "i5"), "exp=a", 6.0, 0.9),
    exposure("u3", 150, ("i4",), "exp=b", 5.0, 0.0),
    exposure("u4", 150, ("i9",), "other=x", 5.0, 0.0),  # another experiment only
    exposure("u5", 150, ("i9",), "", 5.0, 0.0),  # write-back only
    exposure("u6", 150, ("i9",), "exp=gone", 5.0, 0.0),  # a variant the experiment no longer has
]


def outcome(user: str, item: str, action: str, served_at: int, arm: str, at: int = 1000) -> Outcome:
    return Outcome(user, item, action, 1.0, at, served_at, arm)


def test_units_answers_impressions_and_distinct_items_per_variant() -> None:
    s = summarise(experiment(), EXPOSURES, [], ACTIONS, 50, 1000)
    assert (s.experiment, s.enabled, s.traffic, s.since_ms, s.catalogue_items) == ("exp", True, 0.5, 50, 1000)
    a, b = s.variants
    assert (a.variant, a.expected_share, a.units, a.answers, a.impressions, a.distinct_items) == (
        "a", 0.25, 2, 3, 7, 5,
    )  # fmt: skip
    assert (b.variant, b.expected_share, b.units, b.answers, b.impressions, b.distinct_items) == (
        "b", 0.75, 1, 1, 1, 1,
    )  # fmt: skip
    assert list(a.actions) == ["click", "purchase", OTHER]
    # Latency and diversity per answer, summed per user (u1: 2 answers, u2: 1).
    assert a.latency_ms.n == 2 and a.latency_ms.sum_x == 3 and a.latency_ms.sum_y == pytest.approx(36.0)
    assert a.latency_ms.sum_xx == 4 + 1 and a.latency_ms.sum_yy == pytest.approx(30.0**2 + 6.0**2)
    assert a.diversity.sum_y == pytest.approx(2.1) and a.diversity.sum_xy == pytest.approx(2 * 1.2 + 0.9)


def test_actions_are_summed_per_user_and_a_repeated_action_counts_once() -> None:
    outcomes = [
        outcome("u1", "i2", "click", 200, "other=x;exp=a"),
        outcome("u1", "i2", "click", 200, "other=x;exp=a", at=1500),  # the same click again: once
        outcome("u1", "i3", "click", 200, "other=x;exp=a"),
        outcome("u1", "i1", "click", 100, "exp=a"),  # the same item from another answer: counts
        outcome("u1", "i1", "share", 100, "exp=a"),  # not a named action: "other"
        outcome("u1", "i1", "like", 100, "exp=a"),  # another unnamed action on the same item: once
        outcome("u2", "i4", "purchase", 110, "exp=a"),
        outcome("u3", "i4", "click", 150, "exp=b"),
        outcome("u9", "i1", "click", 100, "exp=a"),  # no answer of u9 in the period: left out
        outcome("u4", "i9", "click", 150, "other=x"),  # not this experiment's
    ]
    a, b = summarise(experiment(), EXPOSURES, outcomes, ACTIONS, 0, 1000).variants
    # x per user: impressions (u1 4, u2 3); y: that user's attributed actions.
    assert a.actions["click"] == totals([4, 3], [3, 0])
    assert a.actions["purchase"] == totals([4, 3], [0, 1])
    assert a.actions[OTHER] == totals([4, 3], [1, 0])
    assert b.actions["click"] == totals([1], [1])
    assert b.actions["purchase"].sum_y == 0


def test_action_counts_do_not_depend_on_the_order_of_the_log() -> None:
    """Per-user sums are sums: shuffling the exposures or the outcomes changes nothing."""
    outcomes = [
        outcome("u1", "i2", "click", 200, "other=x;exp=a"),
        outcome("u1", "i3", "click", 200, "other=x;exp=a"),
        outcome("u2", "i4", "click", 110, "exp=a"),
    ]
    forward = summarise(experiment(), EXPOSURES, outcomes, ACTIONS, 0, 1000)
    backward = summarise(experiment(), EXPOSURES[::-1], outcomes[::-1], ACTIONS, 0, 1000)
    assert forward == backward
    assert forward.variants[0].actions["click"].sum_y == 3


def test_a_variant_with_no_users_has_empty_totals() -> None:
    s = summarise(experiment(enabled=False), EXPOSURES[:2], [], ACTIONS, 0, 0)
    a, b = s.variants
    assert not s.enabled and a.units == 1
    assert (b.units, b.answers, b.impressions, b.distinct_items) == (0, 0, 0, 0)
    assert b.actions["click"] == UnitTotals.zero() and b.latency_ms == UnitTotals.zero()


def test_outcome_actions_named_twice_are_one_action() -> None:
    (a, _) = summarise(experiment(), EXPOSURES, [], ["click", "click"], 0, 10).variants
    assert list(a.actions) == ["click", OTHER]
