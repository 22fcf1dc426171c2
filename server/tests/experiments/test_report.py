"""Tests of server/experiments/report.py on hand-made per-user sums: a clearly better variant is named,
equal variants are not told apart, a skewed split is flagged as a sample-ratio mismatch, and the text
and JSON forms carry the verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.experiments.outcomes import OTHER, ExperimentOutcomes, VariantOutcomes
from server.experiments.report import build_report, render, report_dict
from server.experiments.stats import UnitTotals

IMPRESSIONS_PER_USER = 20


def variant(
    name: str,
    users: int,
    ctr: float,
    *,
    share: float = 0.5,
    latency_ms: float = 10.0,
    seed: int = 0,
    clicks: np.ndarray | None = None,
) -> VariantOutcomes:
    """A variant whose users each saw 20 items in 2 answers and clicked each with probability `ctr`."""
    rng = np.random.default_rng(seed)
    impressions = np.full(users, IMPRESSIONS_PER_USER, np.float64)
    clicked = rng.binomial(IMPRESSIONS_PER_USER, ctr, users).astype(np.float64) if clicks is None else clicks
    answers = np.full(users, 2.0)
    return VariantOutcomes(
        name,
        share,
        users,
        2 * users,
        IMPRESSIONS_PER_USER * users,
        min(users * 5, 800),
        {
            "click": UnitTotals.of(impressions, clicked),
            "purchase": UnitTotals.of(impressions, np.zeros(users)),
            OTHER: UnitTotals.of(impressions, np.zeros(users)),
        },
        UnitTotals.of(answers, answers * (latency_ms + rng.normal(0, 1, users))),
        UnitTotals.of(answers, answers * np.clip(rng.normal(0.4, 0.05, users), 0, 2)),
    )


def outcomes(*variants: VariantOutcomes, enabled: bool = True) -> ExperimentOutcomes:
    return ExperimentOutcomes("exp", enabled, 0.5, 1_700_000_000_000, 1000, tuple(variants))


def test_a_clearly_better_variant_is_named_with_the_true_difference_inside_its_interval() -> None:
    report = build_report(
        outcomes(variant("control", 2000, 0.05, seed=1), variant("better", 2000, 0.10, seed=2))
    )
    assert report.control == "control"
    clicks = report.metric("click per impression")
    assert clicks.better == "better"
    control_row, better_row = clicks.variants
    assert control_row.difference is None and control_row.lift is None
    assert control_row.estimate.low < 0.05 < control_row.estimate.high
    assert better_row.difference is not None and better_row.lift is not None
    assert better_row.difference.low < 0.05 < better_row.difference.high  # the true difference
    assert better_row.lift.low < 1.0 < better_row.lift.high  # +100%
    assert not report.sample_ratio.mismatch


def test_equal_variants_have_no_better_one() -> None:
    clicks = np.random.default_rng(5).binomial(20, 0.07, 1000).astype(np.float64)
    report = build_report(
        outcomes(
            variant("a", 1000, 0.0, clicks=clicks, seed=1), variant("b", 1000, 0.0, clicks=clicks, seed=1)
        )
    )
    for m in report.metrics:
        assert m.better is None, m.name
    # A small difference (5 more clicks among 1000 users) that the sample cannot show is not called.
    more = clicks.copy()
    more[:5] += 1
    report = build_report(
        outcomes(variant("a", 1000, 0.0, clicks=clicks), variant("b", 1000, 0.0, clicks=more))
    )
    clicks_metric = report.metric("click per impression")
    assert clicks_metric.variants[1].estimate.value > clicks_metric.variants[0].estimate.value
    assert clicks_metric.better is None


def test_lower_latency_is_better() -> None:
    report = build_report(
        outcomes(
            variant("slow", 1000, 0.05, latency_ms=20, seed=1),
            variant("fast", 1000, 0.05, latency_ms=10, seed=2),
        )
    )
    assert report.metric("latency_ms per answer").better == "fast"


def test_better_needs_to_beat_every_other_variant() -> None:
    """With three variants the best must differ from each: two equally good ones leave no verdict."""
    clicks = np.random.default_rng(9).binomial(20, 0.10, 2000).astype(np.float64)
    report = build_report(
        outcomes(
            variant("control", 2000, 0.05, share=1 / 3, seed=1),
            variant("b", 2000, 0.0, share=1 / 3, clicks=clicks),
            variant("c", 2000, 0.0, share=1 / 3, clicks=clicks),
        )
    )
    assert report.metric("click per impression").better is None
    report = build_report(
        outcomes(
            variant("control", 2000, 0.05, share=1 / 3, seed=1),
            variant("b", 2000, 0.0, share=1 / 3, clicks=clicks),
            variant("c", 2000, 0.03, share=1 / 3, seed=3),
        )
    )
    assert report.metric("click per impression").better == "b"


def test_a_skewed_split_is_a_sample_ratio_mismatch() -> None:
    skewed = build_report(outcomes(variant("a", 1000, 0.05, seed=1), variant("b", 1300, 0.05, seed=2)))
    assert skewed.sample_ratio.mismatch and skewed.sample_ratio.p_value < 0.001
    assert skewed.sample_ratio.observed == (1000, 1300)
    text = render(skewed)
    assert "MISMATCH" in text and "do not trust the results below" in text
    # The same counts are fine when the shares say 1:1.3.
    fine = build_report(
        outcomes(
            variant("a", 1000, 0.05, share=1 / 2.3, seed=1), variant("b", 1300, 0.05, share=1.3 / 2.3, seed=2)
        )
    )
    assert not fine.sample_ratio.mismatch
    assert "-> ok" in render(fine)


def test_render_holds_the_table_and_the_verdict_lines() -> None:
    report = build_report(
        outcomes(variant("control", 2000, 0.05, seed=1), variant("better", 2000, 0.10, seed=2))
    )
    text = render(report)
    assert text.startswith("experiment exp (traffic 0.5); answers since 2023-11-14 22:13 UTC; 95% intervals")
    assert "control: control" in text
    assert "click per impression" in text and "-> better is better" in text
    assert "purchase per impression" in text and "-> no difference found" in text
    # The table: users, answers, impressions, coverage (distinct items over the catalogue).
    row = next(line for line in text.splitlines() if line.startswith("better "))
    assert row.split() == ["better", "0.500", "2,000", "4,000", "40,000", "80.00%"]
    # "other" with nothing in it is left out.
    assert f"{OTHER} per impression" not in text
    killed = render(build_report(outcomes(variant("a", 10, 0.1), variant("b", 10, 0.1), enabled=False)))
    assert "KILLED (enabled: false)" in killed


def test_report_dict_is_json() -> None:
    """`--json` is read by programs: it must be strict JSON (RFC 8259 has no NaN or Infinity), which
    a report holds as soon as a rate is undefined, e.g. the lift of an action nobody took."""
    report = build_report(outcomes(variant("control", 500, 0.05, seed=1), variant("b", 500, 0.10, seed=2)))
    data = report_dict(report)
    parsed = json.loads(json.dumps(data, allow_nan=False))
    assert parsed["experiment"] == "exp" and parsed["control"] == "control"
    assert [v["users"] for v in parsed["variants"]] == [500, 500]
    assert parsed["variants"][0]["coverage"] == pytest.approx(0.8)
    assert parsed["sample_ratio"]["mismatch"] is False
    clicks = next(m for m in parsed["metrics"] if m["metric"] == "click per impression")
    assert clicks["better"] == "b" and clicks["variants"][0]["difference"] is None


def test_report_dict_round_trips_with_python_json() -> None:
    report = build_report(outcomes(variant("control", 500, 0.05, seed=1), variant("b", 500, 0.10, seed=2)))
    parsed = json.loads(json.dumps(report_dict(report)))
    clicks = next(m for m in parsed["metrics"] if m["metric"] == "click per impression")
    b = clicks["variants"][1]
    assert b["difference"]["low"] < b["difference"]["value"] < b["difference"]["high"]
    assert {m["metric"] for m in parsed["metrics"]} == {
        "click per impression",
        "purchase per impression",
        f"{OTHER} per impression",
        "latency_ms per answer",
        "diversity per answer",
    }


def test_unknown_metric_and_no_variants_are_errors() -> None:
    report = build_report(outcomes(variant("a", 10, 0.1), variant("b", 10, 0.1)))
    with pytest.raises(KeyError, match="no metric 'ctr'"):
        report.metric("ctr")
    with pytest.raises(ValueError, match="has no variants"):
        build_report(outcomes())


def test_too_few_users_give_no_verdict() -> None:
    report = build_report(
        outcomes(variant("a", 1, 0.0, clicks=np.array([0.0])), variant("b", 1, 0.0, clicks=np.array([20.0])))
    )
    assert report.metric("click per impression").better is None
