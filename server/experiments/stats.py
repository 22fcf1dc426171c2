"""The statistics behind `recd experiments report`: per-variant rates with confidence intervals, their
differences and relative lifts, and the sample-ratio-mismatch check.

The unit of randomisation is the user: assignment hashes the user id, so every impression of one user lands
in the same variant, and a user's impressions are not independent draws (some users click a lot, some never).
A per-impression binomial interval treats them as independent and is too narrow; the rates here are ratios
of per-user sums (clicks / impressions summed over users) with delta-method variances over users, the
cluster-robust interval used for A/B ratio metrics (Deng, Knoblich & Lu, "Applying the Delta Method in Metric
Analytics", KDD 2018). Everything needed is a handful of running sums per variant (`UnitTotals`), which add
across frontends, days or shards of a log.

Intervals are normal-approximation intervals; that fits the thousands of users a variant has in a real
experiment, and is wide (infinite) rather than wrong where there are fewer than two users. Degenerate inputs
give nan or infinite numbers, never an exception, so a report over a brand-new experiment still prints.

Pure code: the standard library's `math` and NumPy, no SciPy (the quantile and chi-square tail are computed
here, and tested against closed forms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "Estimate",
    "SampleRatioCheck",
    "UnitTotals",
    "chi2_sf",
    "difference",
    "gamma_q",
    "mean",
    "ratio",
    "ratio_difference",
    "relative_lift",
    "sample_ratio_check",
    "z_value",
]


# ---------------------------------------------------------------------------------------------------------
# Sums per variant


@dataclass(frozen=True, slots=True)
class UnitTotals:
    """Per-variant sums over units (users) of a per-unit numerator y (e.g. clicks) and denominator x (e.g.
    impressions): n units, sum_x, sum_y, sum_xx, sum_yy, sum_xy. Enough for the delta method, and additive,
    so totals kept by several frontends or over several periods merge without the per-user rows."""

    n: int
    sum_x: float
    sum_y: float
    sum_xx: float
    sum_yy: float
    sum_xy: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"UnitTotals.n is a count of units and must be >= 0, got {self.n}")

    @classmethod
    def zero(cls) -> UnitTotals:
        """No units: the identity of `merge`."""
        return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> UnitTotals:
        """Totals of per-unit arrays: x[i] and y[i] are unit i's denominator and numerator."""
        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray(y, dtype=np.float64)
        if xs.ndim != 1 or ys.ndim != 1 or xs.shape != ys.shape:
            raise ValueError(
                f"x and y must be 1-D arrays of the same length (one entry per unit), got shapes "
                f"{xs.shape} and {ys.shape}"
            )
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError(
                "x and y must be finite: a NaN or infinite per-unit value would poison every sum"
            )
        return cls(
            n=int(xs.shape[0]),
            sum_x=float(xs.sum()),
            sum_y=float(ys.sum()),
            sum_xx=float(np.dot(xs, xs)),
            sum_yy=float(np.dot(ys, ys)),
            sum_xy=float(np.dot(xs, ys)),
        )

    def merge(self, other: UnitTotals) -> UnitTotals:
        """Totals of the union of two disjoint sets of units. A unit split across both (one user counted by
        two sources) must be combined before its square is taken, not merged here."""
        return UnitTotals(
            n=self.n + other.n,
            sum_x=self.sum_x + other.sum_x,
            sum_y=self.sum_y + other.sum_y,
            sum_xx=self.sum_xx + other.sum_xx,
            sum_yy=self.sum_yy + other.sum_yy,
            sum_xy=self.sum_xy + other.sum_xy,
        )


# ---------------------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its two-sided confidence interval [low, high] and standard error.

    nan everywhere means "not defined" (e.g. a rate over zero impressions); a finite value with stderr inf
    and an interval of (-inf, inf) means "defined but nothing is known about its precision" (fewer than two
    users)."""

    value: float
    low: float
    high: float
    stderr: float

    def excludes(self, null: float = 0.0) -> bool:
        """Whether the interval lies wholly on one side of `null` (a significant difference from it at the
        interval's confidence). False when the interval is nan."""
        return self.low > null or self.high < null

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided normal p-value of the value against `null`, from the standard error; nan when
        undefined, 1.0 when the standard error is infinite."""
        if math.isnan(self.value) or math.isnan(self.stderr):
            return math.nan
        if math.isinf(self.stderr):
            return 1.0
        if self.stderr == 0.0:
            return 1.0 if self.value == null else 0.0
        return math.erfc(abs(self.value - null) / self.stderr / math.sqrt(2.0))


_NAN_ESTIMATE = Estimate(math.nan, math.nan, math.nan, math.nan)


def _estimate(value: float, stderr: float, z: float) -> Estimate:
    """value ± z·stderr, with the degenerate cases spelled out (0·inf would otherwise make a nan bound)."""
    if math.isnan(value) or math.isnan(stderr):
        return _NAN_ESTIMATE
    if math.isinf(stderr):
        return Estimate(value, -math.inf, math.inf, math.inf)
    return Estimate(value, value - z * stderr, value + z * stderr, stderr)


def ratio(t: UnitTotals, confidence: float = 0.95) -> Estimate:
    """sum_y / sum_x (e.g. click-through: clicks over impressions) with a delta-method interval over units.

    With R = sum_y/sum_x and per-unit residuals d_i = y_i - R·x_i (which sum to zero),
    Var(R) ≈ n/(n-1) · Σd_i² / sum_x², the linearisation of the ratio of two means with the sample
    covariance of (x, y) over users; it reduces to the plain variance of a mean when every x_i is 1.

    Degenerate: sum_x == 0 (no impressions, or no units) gives nan value, stderr and bounds; n < 2 gives
    the point value with stderr inf and an interval of (-inf, inf)."""
    z = z_value(confidence)
    if t.sum_x == 0.0 or t.n == 0:
        return _NAN_ESTIMATE
    r = t.sum_y / t.sum_x
    if t.n < 2:
        return _estimate(r, math.inf, z)
    # Σ(y - R x)² expanded into the kept sums; rounding can take an exactly-zero residual slightly negative.
    residual_ss = max(0.0, t.sum_yy - 2.0 * r * t.sum_xy + r * r * t.sum_xx)
    variance = t.n / (t.n - 1) * residual_ss / (t.sum_x * t.sum_x)
    return _estimate(r, math.sqrt(variance), z)


def difference(treatment: Estimate, control: Estimate, confidence: float = 0.95) -> Estimate:
    """treatment - control for estimates from independent groups (users are in one variant only), so the
    variances add."""
    z = z_value(confidence)
    value = treatment.value - control.value
    stderr = math.hypot(treatment.stderr, control.stderr)
    return _estimate(value, stderr, z)


def ratio_difference(treatment: UnitTotals, control: UnitTotals, confidence: float = 0.95) -> Estimate:
    """R_t - R_c (e.g. the absolute click-through difference), the two rates' delta-method variances
    added (independent groups)."""
    return difference(ratio(treatment, confidence), ratio(control, confidence), confidence)


def relative_lift(
    treatment: UnitTotals,
    control: UnitTotals,
    confidence: float = 0.95,
    method: Literal["delta", "fieller"] = "delta",
) -> Estimate:
    """R_t / R_c - 1 (e.g. "+3.2% click-through").

    The value and stderr are always the delta method's: Var(R_t/R_c) ≈ Var(R_t)/R_c² + R_t²·Var(R_c)/R_c⁴
    (independent groups). The interval is value ± z·stderr with method="delta" (symmetric; fine when R_c
    is many standard errors from zero), or Fieller's interval with method="fieller": the set of θ for which
    (R_t - θ·R_c)² ≤ z²·(Var(R_t) + θ²·Var(R_c)), which is asymmetric like the ratio itself and is
    unbounded, reported as (-inf, inf), when R_c is not significantly different from zero at this
    confidence.

    Degenerate: R_c == 0 or undefined gives nan; a group with fewer than two users gives an infinite
    stderr and interval."""
    if method not in ("delta", "fieller"):
        raise ValueError(f"relative_lift method must be 'delta' or 'fieller', got {method!r}")
    z = z_value(confidence)
    rt, rc = ratio(treatment, confidence), ratio(control, confidence)
    a, b = rt.value, rc.value
    if math.isnan(a) or math.isnan(b) or b == 0.0:
        return _NAN_ESTIMATE
    va, vb = rt.stderr**2, rc.stderr**2
    lift = a / b - 1.0
    if math.isinf(va) or math.isinf(vb):
        return _estimate(lift, math.inf, z)
    stderr = math.sqrt(va / (b * b) + a * a * vb / (b * b * b * b))
    if method == "delta":
        return _estimate(lift, stderr, z)
    # Fieller: θ²(b² - z²vb) - 2abθ + (a² - z²va) ≤ 0. Its leading coefficient is positive exactly when
    # b is significantly non-zero; then the discriminant/4 = z²(a²vb + va·lead) is non-negative too.
    lead = b * b - z * z * vb
    if lead <= 0.0:
        return Estimate(lift, -math.inf, math.inf, stderr)
    half_width = z * math.sqrt(a * a * vb + va * lead)
    low, high = (a * b - half_width) / lead, (a * b + half_width) / lead
    return Estimate(lift, low - 1.0, high - 1.0, stderr)


def mean(values_sum: float, values_sq_sum: float, n: int, confidence: float = 0.95) -> Estimate:
    """Mean of n values (e.g. per-list diversity, latency) from their sum and sum of squares, with the
    normal interval mean ± z·s/√n (s the sample standard deviation). For n < 30 or so the Student t
    interval would be somewhat wider; reports have far more lists than that.

    Degenerate: n == 0 gives nan; n == 1 gives the value with stderr inf and an interval of (-inf, inf)."""
    if n < 0:
        raise ValueError(f"mean: n is a count of values and must be >= 0, got {n}")
    z = z_value(confidence)
    if n == 0:
        return _NAN_ESTIMATE
    m = values_sum / n
    if n < 2:
        return _estimate(m, math.inf, z)
    # Sum of squared deviations from the sums; clamp the rounding of an all-equal sample at zero.
    ss = max(0.0, values_sq_sum - values_sum * m)
    return _estimate(m, math.sqrt(ss / (n - 1) / n), z)


# ---------------------------------------------------------------------------------------------------------
# Sample-ratio mismatch


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    """Pearson chi-square goodness of fit of the users observed per variant to the configured shares.

    A mismatch means assignment or logging is broken (a variant loses users to a crash, a cache, a bot
    filter), and its outcome numbers are not to be trusted however good they look. `expected_shares` are
    the normalised shares, in the order of `observed`; zero-share variants take no part in the test."""

    observed: tuple[int, ...]
    expected_shares: tuple[float, ...]
    chi2: float
    dof: int
    p_value: float
    mismatch: bool
    threshold: float


def sample_ratio_check(
    observed: Sequence[int], expected_shares: Sequence[float], threshold: float = 0.001
) -> SampleRatioCheck:
    """Chi-square test of observed unit counts per variant against expected shares (weights, normalised
    here). Variants with a zero share are excluded, observations and all (e.g. a variant reached only
    through an allow-list); callers should count only users assigned by the hash, not forced ones.

    The threshold is small (0.001 by default) because the check runs on every report of every experiment
    and a false alarm sends someone hunting for a bug that is not there; real mismatches are usually far
    below it. With fewer than two included variants or no observations there is nothing to test: chi2 0,
    p 1, no mismatch."""
    if len(observed) != len(expected_shares):
        raise ValueError(
            f"sample_ratio_check needs one expected share per observed count, got {len(observed)} counts "
            f"and {len(expected_shares)} shares"
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"sample_ratio_check threshold is a p-value and must be in (0, 1), got {threshold}")
    counts = tuple(int(c) for c in observed)
    if any(c < 0 for c in counts):
        raise ValueError(f"observed counts must be >= 0, got {list(counts)}")
    shares = [float(s) for s in expected_shares]
    if any(not math.isfinite(s) or s < 0.0 for s in shares):
        raise ValueError(f"expected shares must be finite and >= 0, got {shares}")
    total_share = math.fsum(shares)
    if total_share <= 0.0:
        raise ValueError(f"at least one expected share must be > 0, got {shares}")
    normalised = tuple(s / total_share for s in shares)

    included = [(c, s) for c, s in zip(counts, normalised, strict=True) if s > 0.0]
    total = sum(c for c, _ in included)
    dof = len(included) - 1
    if dof < 1 or total == 0:
        return SampleRatioCheck(counts, normalised, 0.0, max(dof, 0), 1.0, False, threshold)
    chi2 = math.fsum((c - total * s) ** 2 / (total * s) for c, s in included)
    p = chi2_sf(chi2, dof)
    return SampleRatioCheck(counts, normalised, chi2, dof, p, p < threshold, threshold)


# ---------------------------------------------------------------------------------------------------------
# Special functions

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 100_000


def gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) = Γ(a, x)/Γ(a), for a > 0 and x >= 0.

    Below x = a + 1 the power series of P = 1 - Q converges fast (and Q is not small there, so 1 - P
    loses nothing that matters); above it, the continued fraction for Q evaluated by the modified Lentz
    method converges fast and keeps full relative precision far into the tail (p-values of 1e-200)."""
    if not a > 0.0:
        raise ValueError(f"gamma_q needs a > 0, got {a}")
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    # x^a e^-x / Γ(a), in logs: each factor alone overflows for large a or x.
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITERATIONS):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                return max(0.0, 1.0 - total * math.exp(log_prefactor))
        raise ArithmeticError(f"gamma_q series did not converge for a={a}, x={x}")
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(log_prefactor) * h
    raise ArithmeticError(f"gamma_q continued fraction did not converge for a={a}, x={x}")


def chi2_sf(chi2: float, dof: int) -> float:
    """P(X >= chi2) for X chi-square with dof degrees of freedom: Q(dof/2, chi2/2)."""
    if dof < 1:
        raise ValueError(f"chi-square degrees of freedom must be >= 1, got {dof}")
    return gamma_q(dof / 2.0, chi2 / 2.0)


# Acklam's rational approximation of the normal quantile (relative error < 1.15e-9), used as the start of
# Halley steps on the exact tail from math.erfc.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)  # fmt: skip
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549671348201891e00,
      4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def _lower_quantile(p: float) -> float:
    """Φ⁻¹(p) for 0 < p <= 0.5, where it is <= 0; working on the lower tail directly keeps full relative
    precision for tiny p (1 - p would round to 1)."""
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5])
            * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
        )
    for _ in range(2):
        # Halley's method on Φ(x) - p, with Φ(x) = erfc(-x/√2)/2 exact in the lower tail.
        e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
        u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
        x -= u / (1.0 + x * u / 2.0)
    return x


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for a confidence level: z with P(|Z| <= z) = confidence, e.g.
    0.95 -> 1.959963984540054. Accurate to about 1e-15 relative."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}")
    return -_lower_quantile((1.0 - confidence) / 2.0)
