"""`recd experiments report`: per-variant rates with intervals, differences from the control, a verdict,
and a sample-ratio check, from the per-user sums a frontend returns (server/experiments/outcomes.py).

The control is the experiment's first variant. Rates are per impression (each outcome action) or per
answer (latency, diversity), with the user as the unit (delta method, server/experiments/stats.py).
A metric has a better variant only when that variant's difference from every other one is outside
zero at the report's confidence; otherwise the report says no difference was found. A sample-ratio
mismatch (users per variant far from the configured shares) means assignment or logging is broken: the
report says so before any result, as none can be trusted then.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass

from server.experiments.outcomes import OTHER, ExperimentOutcomes, VariantOutcomes
from server.experiments.stats import (
    Estimate,
    SampleRatioCheck,
    UnitTotals,
    ratio,
    ratio_difference,
    relative_lift,
    sample_ratio_check,
)

# Metrics where less is better.
LOWER_IS_BETTER = frozenset({"latency_ms per answer"})


@dataclass(frozen=True, slots=True)
class VariantMetric:
    variant: str
    estimate: Estimate
    difference: Estimate | None  # from the control (None for the control itself)
    lift: Estimate | None  # relative to the control


@dataclass(frozen=True, slots=True)
class Metric:
    name: str  # "click per impression", "latency_ms per answer", ...
    variants: tuple[VariantMetric, ...]
    better: str | None  # the variant better than every other one at the confidence, if any


@dataclass(frozen=True, slots=True)
class Report:
    outcomes: ExperimentOutcomes
    confidence: float
    control: str
    sample_ratio: SampleRatioCheck
    metrics: tuple[Metric, ...]

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no metric {name!r}; metrics: {[m.name for m in self.metrics]}")


def build_report(outcomes: ExperimentOutcomes, confidence: float = 0.95) -> Report:
    variants = outcomes.variants
    if not variants:
        raise ValueError(f"experiment {outcomes.experiment} has no variants")
    # Allow-listed users did not come from the hash: they would skew the check.
    srm = sample_ratio_check(
        [v.units - v.forced_units for v in variants], [v.expected_share for v in variants]
    )
    actions = list(variants[0].actions)
    metrics = [
        _metric(
            f"{a} per impression",
            [v.actions.get(a, UnitTotals.zero()) for v in variants],
            variants,
            confidence,
        )
        for a in actions
    ]
    metrics.append(_metric("latency_ms per answer", [v.latency_ms for v in variants], variants, confidence))
    metrics.append(_metric("diversity per answer", [v.diversity for v in variants], variants, confidence))
    return Report(outcomes, confidence, variants[0].variant, srm, tuple(metrics))


def _metric(
    name: str, totals: Sequence[UnitTotals], variants: Sequence[VariantOutcomes], confidence: float
) -> Metric:
    control = totals[0]
    rows = [VariantMetric(variants[0].variant, ratio(control, confidence), None, None)]
    for v, t in zip(variants[1:], totals[1:], strict=True):
        rows.append(
            VariantMetric(
                v.variant,
                ratio(t, confidence),
                ratio_difference(t, control, confidence),
                relative_lift(t, control, confidence),
            )
        )
    return Metric(name, tuple(rows), _better(name, totals, variants, confidence))


def _better(
    name: str, totals: Sequence[UnitTotals], variants: Sequence[VariantOutcomes], confidence: float
) -> str | None:
    sign = -1.0 if name in LOWER_IS_BETTER else 1.0
    values = [sign * ratio(t).value for t in totals]
    if len(values) < 2 or any(math.isnan(x) for x in values):
        return None
    best = max(range(len(values)), key=lambda i: values[i])
    for other in range(len(values)):
        if other == best:
            continue
        d = ratio_difference(totals[best], totals[other], confidence)
        low, high = (d.low, d.high) if sign > 0 else (-d.high, -d.low)
        if not low > 0 or math.isinf(high):
            return None
    return variants[best].variant


def render(report: Report) -> str:
    o = report.outcomes
    since = (
        "everything held"
        if o.since_ms == 0
        else datetime.datetime.fromtimestamp(o.since_ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )
    state = f"traffic {o.traffic:g}" if o.enabled else "KILLED (enabled: false)"
    lines = [
        f"experiment {o.experiment} ({state}); answers since {since}; "
        f"{report.confidence:.0%} intervals, the user as the unit; control: {report.control}",
        "",
        f"{'variant':<16} {'share':>6} {'users':>9} {'answers':>10} {'impressions':>12} {'coverage':>9}",
    ]
    for v in o.variants:
        coverage = v.distinct_items / o.catalogue_items if o.catalogue_items else float("nan")
        lines.append(
            f"{v.variant:<16} {v.expected_share:>6.3f} {v.units:>9,} {v.answers:>10,} {v.impressions:>12,} "
            f"{coverage:>9.2%}"
        )
    s = report.sample_ratio
    verdict = (
        "MISMATCH: users per variant do not match the shares; assignment or logging is broken, do not "
        "trust the results below"
        if s.mismatch
        else "ok"
    )
    lines += ["", f"sample ratio: chi2 {s.chi2:.2f}, dof {s.dof}, p {s.p_value:.3g} -> {verdict}"]
    for m in report.metrics:
        if all(v.estimate.value == 0 for v in m.variants):
            if not m.name.startswith(f"{OTHER} "):
                lines += ["", f"{m.name}: none recorded"]
            continue
        lines += ["", m.name]
        for row in m.variants:
            e = row.estimate
            text = f"  {row.variant:<16} {e.value:>10.4g} [{e.low:.4g}, {e.high:.4g}]"
            if row.difference is not None and row.lift is not None:
                d, lift = row.difference, row.lift
                text += f"   diff {d.value:+.4g} [{d.low:+.4g}, {d.high:+.4g}]   lift {_percent(lift)}"
            lines.append(text)
        lines.append(f"  -> {m.better} is better" if m.better else "  -> no difference found")
    return "\n".join(lines)


def _percent(e: Estimate) -> str:
    """A relative lift and its interval; "n/a" where the control's rate is 0 (no lift is defined)."""
    if not math.isfinite(e.value):
        return "n/a"
    return f"{e.value:+.1%} [{e.low:+.1%}, {e.high:+.1%}]"


def report_dict(report: Report) -> dict[str, object]:
    """The report as JSON-able data (`--json`)."""

    def number(x: float) -> float | None:
        return x if math.isfinite(x) else None  # strict JSON has no NaN or infinity

    def est(e: Estimate | None) -> dict[str, float | None] | None:
        if e is None:
            return None
        return {
            "value": number(e.value),
            "low": number(e.low),
            "high": number(e.high),
            "stderr": number(e.stderr),
        }

    o = report.outcomes
    return {
        "experiment": o.experiment,
        "enabled": o.enabled,
        "traffic": o.traffic,
        "since_ms": o.since_ms,
        "confidence": report.confidence,
        "control": report.control,
        "variants": [
            {
                "variant": v.variant,
                "expected_share": v.expected_share,
                "users": v.units,
                "answers": v.answers,
                "impressions": v.impressions,
                "distinct_items": v.distinct_items,
                "coverage": v.distinct_items / o.catalogue_items if o.catalogue_items else None,
            }
            for v in o.variants
        ],
        "sample_ratio": {
            "chi2": number(report.sample_ratio.chi2),
            "dof": report.sample_ratio.dof,
            "p_value": number(report.sample_ratio.p_value),
            "mismatch": report.sample_ratio.mismatch,
        },
        "metrics": [
            {
                "metric": m.name,
                "better": m.better,
                "variants": [
                    {
                        "variant": r.variant,
                        "estimate": est(r.estimate),
                        "difference": est(r.difference),
                        "lift": est(r.lift),
                    }
                    for r in m.variants
                ],
            }
            for m in report.metrics
        ],
    }
