"""Tests of server/experiments/stats.py: the special functions against closed forms and published critical
values, the sample-ratio check by hand and under the null, and the intervals' coverage on simulated
clustered experiments (seeded, so the coverage numbers are fixed, not flaky)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest

from server.experiments.stats import (
    Estimate,
    UnitTotals,
    chi2_sf,
    difference,
    gamma_q,
    mean,
    ratio,
    ratio_difference,
    relative_lift,
    sample_ratio_check,
    z_value,
)

# ---------------------------------------------------------------------------------------------------------
# z_value


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [
        # Published two-sided normal quantiles, Φ⁻¹((1 + c)/2), to 16 digits.
        (0.50, 0.6744897501960817),
        (0.80, 1.2815515655446004),
        (0.90, 1.6448536269514722),
        (0.95, 1.9599639845400538),
        (0.99, 2.5758293035489004),
        (0.999, 3.2905267314919255),
        (0.999999, 4.891638475698872),
    ],
)
def test_z_value_matches_known_quantiles(confidence: float, expected: float) -> None:
    assert z_value(confidence) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "confidence", [1e-6, 0.01, 0.3, 0.6827, 0.9, 0.9545, 0.975, 0.9973, 0.99999, 1 - 1e-12]
)
def test_z_value_inverts_erf(confidence: float) -> None:
    # P(|Z| <= z) = erf(z/√2): the round trip through the standard library's erf is the oracle.
    assert math.erf(z_value(confidence) / math.sqrt(2.0)) == pytest.approx(confidence, abs=1e-14)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_z_value_rejects_confidence_outside_unit_interval(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence must be in"):
        z_value(confidence)


# ---------------------------------------------------------------------------------------------------------
# chi-square survival


@pytest.mark.parametrize(
    ("chi2", "dof", "p"),
    [
        # Critical values of chi-square tables.
        (3.841458820694124, 1, 0.05),
        (6.634896601021214, 1, 0.01),
        (5.991464547107979, 2, 0.05),
        (7.814727903251178, 3, 0.05),
        (11.070497693516351, 5, 0.05),
        (15.08627246938899, 5, 0.01),
        (18.307038053275146, 10, 0.05),
        (124.34211340400407, 100, 0.05),
        # The median of one degree of freedom.
        (0.454936423119572, 1, 0.5),
    ],
)
def test_chi2_sf_matches_table_critical_values(chi2: float, dof: int, p: float) -> None:
    assert chi2_sf(chi2, dof) == pytest.approx(p, rel=1e-9)


def _chi2_sf_even(x: float, dof: int) -> float:
    """Closed form for even dof = 2k: P(Poisson(x/2) < k) = e^(-x/2) Σ_{j<k} (x/2)^j / j!."""
    half = x / 2.0
    return math.exp(-half) * math.fsum(half**j / math.factorial(j) for j in range(dof // 2))


@pytest.mark.parametrize("dof", [2, 4, 10, 30, 100])
@pytest.mark.parametrize("x_over_dof", [0.001, 0.3, 0.9, 1.0, 1.1, 2.0, 5.0])
def test_chi2_sf_matches_closed_form_for_even_dof(dof: int, x_over_dof: float) -> None:
    # Both branches of gamma_q (series below x = a + 1, continued fraction above) are crossed here.
    x = x_over_dof * dof
    assert chi2_sf(x, dof) == pytest.approx(_chi2_sf_even(x, dof), rel=1e-11)


@pytest.mark.parametrize("x", [1e-8, 0.01, 0.5, 1.0, 2.0, 3.841458820694124, 10.0, 50.0, 300.0, 1000.0])
def test_chi2_sf_matches_closed_form_for_one_dof(x: float) -> None:
    # One degree of freedom: P(Z² >= x) = erfc(√(x/2)); the relative agreement holds deep in the tail.
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2.0)), rel=1e-11)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 1) == 1.0
    assert chi2_sf(0.0, 7) == 1.0
    assert chi2_sf(-3.0, 2) == 1.0
    assert chi2_sf(math.inf, 3) == 0.0
    assert math.isnan(chi2_sf(math.nan, 3))
    tiny = chi2_sf(1000.0, 3)
    assert 0.0 < tiny < 1e-200
    # Decreasing in chi2, increasing in dof.
    values = [chi2_sf(x, 4) for x in np.linspace(0.0, 40.0, 81)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert chi2_sf(10.0, 3) < chi2_sf(10.0, 4) < chi2_sf(10.0, 8)


def test_chi2_sf_and_gamma_q_reject_bad_shape() -> None:
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1"):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError, match="needs a > 0"):
        gamma_q(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# sample-ratio check


def test_sample_ratio_check_balanced_counts_do_not_mismatch() -> None:
    check = sample_ratio_check([10_000, 10_000], [0.5, 0.5])
    assert check.chi2 == 0.0
    assert check.dof == 1
    assert check.p_value == 1.0
    assert not check.mismatch


def test_sample_ratio_check_flags_a_three_percent_imbalance() -> None:
    # Expected 10,300 each of 20,600. chi2 = 2 * 300² / 10,300 = 17.4757; with one degree of freedom
    # p = erfc(√(17.4757/2)) = erfc(2.95599) ≈ 2.91e-5, far below the 0.001 threshold.
    check = sample_ratio_check([10_000, 10_600], [1, 1])
    assert check.expected_shares == (0.5, 0.5)
    assert check.chi2 == pytest.approx(180_000 / 10_300, rel=1e-12)
    assert check.dof == 1
    assert check.p_value == pytest.approx(2.91e-5, rel=1e-3)
    assert check.mismatch


def test_sample_ratio_check_uses_weights_and_excludes_zero_share_variants() -> None:
    check = sample_ratio_check([5_030, 2_490, 2_480, 77], [2, 1, 1, 0])
    assert check.observed == (5_030, 2_490, 2_480, 77)
    assert check.expected_shares == (0.5, 0.25, 0.25, 0.0)
    assert check.dof == 2
    # Of 10,000: expected 5,000 / 2,500 / 2,500.
    assert check.chi2 == pytest.approx(30**2 / 5_000 + 10**2 / 2_500 + 20**2 / 2_500, rel=1e-12)
    assert check.p_value == pytest.approx(math.exp(-check.chi2 / 2), rel=1e-12)  # dof 2 closed form
    assert not check.mismatch


@pytest.mark.parametrize(
    ("observed", "shares", "dof"),
    [
        ([0, 0], [1, 1], 1),  # no users yet
        ([1_234], [1.0], 0),  # a single variant
        ([1_234, 99], [1.0, 0.0], 0),  # a single variant with a share
    ],
)
def test_sample_ratio_check_with_nothing_to_test(observed: list[int], shares: list[float], dof: int) -> None:
    check = sample_ratio_check(observed, shares)
    assert (check.chi2, check.dof, check.p_value, check.mismatch) == (0.0, dof, 1.0, False)


def test_sample_ratio_check_is_calibrated_under_the_null() -> None:
    # Counts drawn with exactly the configured shares: p-values are uniform, so about 5% fall below 0.05
    # and about 0.1% below the default threshold.
    rng = np.random.default_rng(20261205)
    shares = [0.5, 0.3, 0.2]
    p_values = np.array(
        [sample_ratio_check(rng.multinomial(20_000, shares).tolist(), shares).p_value for _ in range(4_000)]
    )
    assert 0.04 <= float(np.mean(p_values < 0.05)) <= 0.06
    assert float(np.mean(p_values < 0.001)) <= 0.004
    assert 0.47 <= float(np.median(p_values)) <= 0.53


@pytest.mark.parametrize(
    ("observed", "shares", "threshold", "message"),
    [
        ([1, 2], [1.0], 0.001, "one expected share per observed count"),
        ([1, -2], [1.0, 1.0], 0.001, "counts must be >= 0"),
        ([1, 2], [1.0, -1.0], 0.001, "finite and >= 0"),
        ([1, 2], [1.0, math.inf], 0.001, "finite and >= 0"),
        ([1, 2], [0.0, 0.0], 0.001, "at least one expected share"),
        ([1, 2], [1.0, 1.0], 0.0, "threshold"),
        ([1, 2], [1.0, 1.0], 1.0, "threshold"),
    ],
)
def test_sample_ratio_check_rejects_bad_input(
    observed: list[int], shares: list[float], threshold: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sample_ratio_check(observed, shares, threshold)


# ---------------------------------------------------------------------------------------------------------
# UnitTotals


def test_unit_totals_of_and_merge_equal_totals_of_the_concatenation() -> None:
    rng = np.random.default_rng(7)
    x1, x2 = rng.poisson(5.0, 300).astype(float), rng.poisson(9.0, 700).astype(float)
    y1, y2 = rng.binomial(x1.astype(int), 0.2).astype(float), rng.binomial(x2.astype(int), 0.3).astype(float)
    merged = UnitTotals.of(x1, y1).merge(UnitTotals.of(x2, y2))
    whole = UnitTotals.of(np.concatenate([x1, x2]), np.concatenate([y1, y2]))
    assert merged == whole  # integer-valued floats sum exactly in any order
    assert merged.n == 1_000
    assert merged.sum_x == float(x1.sum() + x2.sum())
    assert merged.sum_xy == float(np.dot(x1, y1) + np.dot(x2, y2))
    assert UnitTotals.zero().merge(whole) == whole
    # A variant nobody was served yet.
    assert UnitTotals.of(np.array([]), np.array([])) == UnitTotals.zero()


def test_unit_totals_of_real_values_merges_to_rounding() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.gamma(2.0, 1.5, 1_000), rng.normal(3.0, 2.0, 1_000)
    merged = UnitTotals.of(x[:123], y[:123]).merge(UnitTotals.of(x[123:], y[123:]))
    whole = UnitTotals.of(x, y)
    assert merged.n == whole.n
    for field in ("sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.ones(3), np.ones(4), "same length"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
        (np.array([1.0, math.nan]), np.ones(2), "finite"),
        (np.ones(2), np.array([math.inf, 1.0]), "finite"),
    ],
)
def test_unit_totals_of_rejects_bad_arrays(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UnitTotals.of(x, y)


def test_unit_totals_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        UnitTotals(-1, 0.0, 0.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------
# ratio, mean, difference, lift: exact formulas


def test_ratio_variance_is_the_delta_method_over_units() -> None:
    # Var(ȳ/x̄) ≈ (s_yy - 2R s_xy + R² s_xx) / (n x̄²), with sample (co)variances: written out with np.cov
    # here, from the kept sums in the module.
    rng = np.random.default_rng(11)
    x = rng.poisson(6.0, 500).astype(float)
    y = rng.binomial(x.astype(int), rng.beta(1.0, 6.0, 500)).astype(float)
    est = ratio(UnitTotals.of(x, y))
    r = y.sum() / x.sum()
    cov = np.cov(np.vstack([x, y]))  # ddof = 1
    variance = (cov[1, 1] - 2 * r * cov[0, 1] + r * r * cov[0, 0]) / (len(x) * x.mean() ** 2)
    assert est.value == pytest.approx(r, rel=1e-14)
    assert est.stderr == pytest.approx(math.sqrt(variance), rel=1e-10)
    assert est.low == pytest.approx(r - 1.959963984540054 * est.stderr, rel=1e-12)
    assert est.high == pytest.approx(r + 1.959963984540054 * est.stderr, rel=1e-12)


def test_ratio_with_one_impression_per_user_is_the_mean_of_y() -> None:
    rng = np.random.default_rng(12)
    y = rng.binomial(1, 0.3, 2_000).astype(float)
    by_ratio = ratio(UnitTotals.of(np.ones_like(y), y), confidence=0.9)
    by_mean = mean(float(y.sum()), float(np.dot(y, y)), len(y), confidence=0.9)
    assert by_ratio.value == pytest.approx(y.mean(), rel=1e-14)
    assert by_ratio.stderr == pytest.approx(y.std(ddof=1) / math.sqrt(len(y)), rel=1e-10)
    for field in ("value", "low", "high", "stderr"):
        assert getattr(by_ratio, field) == pytest.approx(getattr(by_mean, field), rel=1e-10)


def test_ratio_of_units_all_at_the_same_rate_has_no_spread() -> None:
    x = np.array([2.0, 4.0, 10.0, 6.0])
    est = ratio(UnitTotals.of(x, 0.25 * x))
    assert est == Estimate(0.25, 0.25, 0.25, 0.0)


def test_mean_matches_numpy() -> None:
    rng = np.random.default_rng(13)
    v = rng.lognormal(1.0, 0.5, 777)
    est = mean(float(v.sum()), float(np.dot(v, v)), len(v), confidence=0.99)
    assert est.value == pytest.approx(v.mean(), rel=1e-13)
    assert est.stderr == pytest.approx(v.std(ddof=1) / math.sqrt(len(v)), rel=1e-9)
    assert est.high - est.value == pytest.approx(2.5758293035489004 * est.stderr, rel=1e-12)


def test_difference_adds_variances() -> None:
    d = difference(Estimate(0.30, 0.0, 0.0, 0.03), Estimate(0.20, 0.0, 0.0, 0.04))
    assert d.value == pytest.approx(0.10)
    assert d.stderr == pytest.approx(0.05)
    assert (d.low, d.high) == pytest.approx(
        (0.10 - 1.959963984540054 * 0.05, 0.10 + 1.959963984540054 * 0.05)
    )
    assert d.excludes(0.0)  # 0.10 ± 0.098 stays above 0
    assert not d.excludes(0.05)
    assert d.p_value() == pytest.approx(math.erfc(2.0 / math.sqrt(2.0)))


def test_relative_lift_delta_and_fieller() -> None:
    rng = np.random.default_rng(14)
    xt, xc = rng.poisson(8.0, 5_000).astype(float), rng.poisson(8.0, 5_000).astype(float)
    yt = rng.binomial(xt.astype(int), 0.12).astype(float)
    yc = rng.binomial(xc.astype(int), 0.10).astype(float)
    t, c = UnitTotals.of(xt, yt), UnitTotals.of(xc, yc)
    rt, rc = ratio(t), ratio(c)
    delta = relative_lift(t, c)
    fieller = relative_lift(t, c, method="fieller")
    a, b = rt.value, rc.value
    expected_se = (a / b) * math.sqrt((rt.stderr / a) ** 2 + (rc.stderr / b) ** 2)
    assert delta.value == fieller.value == pytest.approx(a / b - 1.0, rel=1e-14)
    assert delta.stderr == fieller.stderr == pytest.approx(expected_se, rel=1e-12)
    assert delta.high - delta.value == pytest.approx(delta.value - delta.low, rel=1e-12)
    # Fieller's interval leans the way the ratio does (further up than down) and, with the control rate
    # 30 standard errors from zero, is close to the delta method's.
    assert fieller.high - fieller.value > fieller.value - fieller.low
    assert fieller.low == pytest.approx(delta.low, abs=0.1 * delta.stderr)
    assert fieller.high == pytest.approx(delta.high, abs=0.1 * delta.stderr)
    # Each Fieller bound θ - 1 solves (a - θ b)² = z² (va + θ² vb).
    z, va, vb = 1.959963984540054, rt.stderr**2, rc.stderr**2
    for bound in (fieller.low, fieller.high):
        theta = bound + 1.0
        assert (a - theta * b) ** 2 == pytest.approx(z * z * (va + theta * theta * vb), rel=1e-9)
    assert delta.excludes(0.0) and fieller.excludes(0.0)


def test_relative_lift_rejects_unknown_method() -> None:
    t = UnitTotals.of(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="'delta' or 'fieller'"):
        relative_lift(t, t, method="bootstrap")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Degenerate inputs: numbers that say "undefined" or "unknown precision", never an exception

_NONE = UnitTotals.zero()
_ONE_USER = UnitTotals.of(np.array([5.0]), np.array([1.0]))
_NO_IMPRESSIONS = UnitTotals.of(np.zeros(10), np.zeros(10))
_NO_CLICKS = UnitTotals.of(np.full(50, 4.0), np.zeros(50))
_NORMAL = UnitTotals.of(np.array([3.0, 5.0, 2.0, 8.0, 4.0]), np.array([1.0, 0.0, 1.0, 2.0, 0.0]))
_NOISY_FEW = UnitTotals.of(np.array([1.0, 1.0, 1.0]), np.array([1.0, 0.0, 0.0]))


def _is_nan(e: Estimate) -> bool:
    return all(math.isnan(v) for v in (e.value, e.low, e.high, e.stderr))


def _is_unbounded(e: Estimate) -> bool:
    return math.isfinite(e.value) and e.low == -math.inf and e.high == math.inf


@pytest.mark.parametrize(
    ("name", "compute", "shape"),
    [
        ("ratio of no units", lambda: ratio(_NONE), "nan"),
        ("ratio of no impressions", lambda: ratio(_NO_IMPRESSIONS), "nan"),
        ("ratio of one user", lambda: ratio(_ONE_USER), "unbounded"),
        ("difference with an empty group", lambda: ratio_difference(_NONE, _NORMAL), "nan"),
        ("difference with one user", lambda: ratio_difference(_NORMAL, _ONE_USER), "unbounded"),
        ("lift over a zero control rate", lambda: relative_lift(_NORMAL, _NO_CLICKS), "nan"),
        (
            "fieller lift over a zero control rate",
            lambda: relative_lift(_NORMAL, _NO_CLICKS, method="fieller"),
            "nan",
        ),
        ("lift over an empty control", lambda: relative_lift(_NORMAL, _NONE), "nan"),
        ("lift of an empty treatment", lambda: relative_lift(_NONE, _NORMAL), "nan"),
        ("lift with one user", lambda: relative_lift(_ONE_USER, _NORMAL), "unbounded"),
        (
            "fieller lift with one user",
            lambda: relative_lift(_NORMAL, _ONE_USER, method="fieller"),
            "unbounded",
        ),
        (
            "fieller lift over a control rate indistinct from 0",
            lambda: relative_lift(_NORMAL, _NOISY_FEW, method="fieller"),
            "unbounded",
        ),
        ("mean of nothing", lambda: mean(0.0, 0.0, 0), "nan"),
        ("mean of one value", lambda: mean(3.0, 9.0, 1), "unbounded"),
        ("lift of a zero treatment rate", lambda: relative_lift(_NO_CLICKS, _NORMAL), "finite"),
        ("mean of equal values", lambda: mean(12.0, 48.0, 3), "finite"),
    ],
)
def test_degenerate_inputs_do_not_raise(name: str, compute: object, shape: str) -> None:
    assert callable(compute)
    est = compute()
    assert isinstance(est, Estimate), name
    if shape == "nan":
        assert _is_nan(est), est
        assert math.isnan(est.p_value())
        assert not est.excludes(0.0)
    elif shape == "unbounded":
        assert _is_unbounded(est), est
        assert not est.excludes(0.0)
        # Fieller's interval can be unbounded with a finite (delta-method) stderr.
        assert est.p_value() == 1.0 or math.isfinite(est.stderr)
    else:
        assert all(math.isfinite(v) for v in (est.value, est.low, est.high, est.stderr)), est


def test_degenerate_values_are_the_defined_ones() -> None:
    assert ratio(_ONE_USER).value == 0.2
    assert relative_lift(_NO_CLICKS, _NORMAL).value == -1.0
    assert mean(12.0, 48.0, 3) == Estimate(4.0, 4.0, 4.0, 0.0)
    assert mean(3.0, 9.0, 1).value == 3.0


def test_mean_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        mean(0.0, 0.0, -1)


# ---------------------------------------------------------------------------------------------------------
# Coverage on simulated clustered experiments


@dataclass(frozen=True)
class _Experiments:
    """Many simulated runs of one experiment: per-user impressions Poisson(mean_impressions), each user with
    their own click probability drawn from a Beta (so clicks cluster by user), clicks Binomial."""

    treatment: list[UnitTotals]
    control: list[UnitTotals]
    true_treatment: float
    true_control: float


_RUNS = 2_000
_USERS = 1_000
_MEAN_IMPRESSIONS = 10.0
# Beta(a, b) with a + b = 10: the correlation of two impressions of one user is 1/(a+b+1) ≈ 0.09, so with
# 10 impressions a user the per-impression variance understates the truth by about 1 + 10/11 ≈ 1.9x.
_CONCENTRATION = 10.0


def _simulate(rng: np.random.Generator, rate: float) -> list[UnitTotals]:
    impressions = rng.poisson(_MEAN_IMPRESSIONS, size=(_RUNS, _USERS))
    user_rates = rng.beta(rate * _CONCENTRATION, (1.0 - rate) * _CONCENTRATION, size=(_RUNS, _USERS))
    clicks = rng.binomial(impressions, user_rates)
    return [UnitTotals.of(impressions[i], clicks[i]) for i in range(_RUNS)]


@pytest.fixture(scope="module")
def experiments() -> _Experiments:
    rng = np.random.default_rng(14_2026)
    # Rates independent of how many impressions a user gets, so the population ratio is the Beta mean.
    return _Experiments(_simulate(rng, 0.12), _simulate(rng, 0.10), 0.12, 0.10)


def _coverage(estimates: list[Estimate], truth: float) -> float:
    return float(np.mean([e.low <= truth <= e.high for e in estimates]))


def _naive_binomial(t: UnitTotals, z: float) -> tuple[float, float]:
    """p ± z √(p(1-p)/impressions): every impression an independent trial."""
    p = t.sum_y / t.sum_x
    return p, p * (1.0 - p) / t.sum_x


@pytest.mark.parametrize(("confidence", "low", "high"), [(0.95, 0.93, 0.97), (0.90, 0.875, 0.925)])
def test_ratio_interval_covers_the_true_rate(
    experiments: _Experiments, confidence: float, low: float, high: float
) -> None:
    # 2,000 runs: the coverage's own standard error is about 0.5 points at the 0.95 level, so the band is
    # ±4 of them (±3.7 at 0.90); the seed fixes the draw, so this does not flicker.
    for totals, truth in (
        (experiments.treatment, experiments.true_treatment),
        (experiments.control, experiments.true_control),
    ):
        coverage = _coverage([ratio(t, confidence) for t in totals], truth)
        assert low <= coverage <= high, coverage


def test_naive_binomial_interval_under_covers_clustered_clicks(experiments: _Experiments) -> None:
    # Why the unit is the user: treating each impression as independent gives an interval about 1/√1.9 as
    # wide as it should be, covering only about 84% instead of 95%.
    z = z_value(0.95)
    covered = []
    for t in experiments.control:
        p, variance = _naive_binomial(t, z)
        covered.append(abs(p - experiments.true_control) <= z * math.sqrt(variance))
    naive = float(np.mean(covered))
    delta = _coverage([ratio(t) for t in experiments.control], experiments.true_control)
    assert naive < 0.90, naive
    assert delta - naive > 0.06, (delta, naive)


def test_ratio_difference_interval_covers_the_true_difference(experiments: _Experiments) -> None:
    truth = experiments.true_treatment - experiments.true_control
    estimates = [
        ratio_difference(t, c) for t, c in zip(experiments.treatment, experiments.control, strict=True)
    ]
    coverage = _coverage(estimates, truth)
    assert 0.93 <= coverage <= 0.97, coverage
    # The naive per-impression interval of the same difference under-covers as well.
    z = z_value(0.95)
    naive = []
    for t, c in zip(experiments.treatment, experiments.control, strict=True):
        (pt, vt), (pc, vc) = _naive_binomial(t, z), _naive_binomial(c, z)
        naive.append(abs(pt - pc - truth) <= z * math.sqrt(vt + vc))
    assert float(np.mean(naive)) < 0.90
    # A 2-point difference on 10,000 impressions a side is found in most runs.
    assert float(np.mean([e.excludes(0.0) for e in estimates])) > 0.5


@pytest.mark.parametrize("method", ["delta", "fieller"])
def test_relative_lift_interval_covers_the_true_lift(experiments: _Experiments, method: str) -> None:
    truth = experiments.true_treatment / experiments.true_control - 1.0
    estimates = [
        relative_lift(t, c, method=method)  # type: ignore[arg-type]
        for t, c in zip(experiments.treatment, experiments.control, strict=True)
    ]
    coverage = _coverage(estimates, truth)
    assert 0.93 <= coverage <= 0.97, coverage
