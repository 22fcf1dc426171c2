"""Token buckets per (caller, role): burst, refill, the retry hint, and which quota applies."""

from __future__ import annotations

import pytest

from server.config import QuotaConfig
from server.security.auth import Caller
from server.security.quotas import Quotas, TokenBucket, retry_after_ms


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token needs 1 / rate
    assert bucket.take(0.25) == pytest.approx(0.25)  # half of it came back meanwhile
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)
    # Idle for long: never more than the burst.
    assert [bucket.take(100.0) for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, now=0.0)
    assert bucket.take(0.0) == 0.0
    for _ in range(10):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_a_callers_own_quota_wins_over_its_roles() -> None:
    now = [0.0]
    quotas = Quotas({"recommend": QuotaConfig(rate_per_s=1.0, burst=2.0)}, clock=lambda: now[0])
    plain = Caller("plain", frozenset({"recommend", "feedback"}))
    vip = Caller("vip", frozenset({"recommend"}), {"recommend": QuotaConfig(rate_per_s=10.0, burst=5.0)})
    assert [quotas.admit(plain, "recommend") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert all(quotas.admit(vip, "recommend") == 0.0 for _ in range(5))
    assert quotas.admit(vip, "recommend") == pytest.approx(0.1)
    # No quota for the role: unlimited; and each role has its own bucket.
    assert all(quotas.admit(plain, "feedback") == 0.0 for _ in range(100))
    now[0] = 1.0
    assert quotas.admit(plain, "recommend") == 0.0


def test_burst_defaults_to_one_seconds_worth() -> None:
    quotas = Quotas({"catalog": QuotaConfig(rate_per_s=3.0)}, clock=lambda: 0.0)
    caller = Caller("c", frozenset({"catalog"}))
    assert [quotas.admit(caller, "catalog") > 0 for _ in range(4)] == [False, False, False, True]


def test_a_changed_limit_starts_a_new_bucket() -> None:
    quotas = Quotas({}, clock=lambda: 0.0)
    before = Caller("c", frozenset({"catalog"}), {"catalog": QuotaConfig(rate_per_s=1.0, burst=1.0)})
    after = Caller("c", frozenset({"catalog"}), {"catalog": QuotaConfig(rate_per_s=1.0, burst=3.0)})
    assert quotas.admit(before, "catalog") == 0.0 and quotas.admit(before, "catalog") > 0
    assert [quotas.admit(after, "catalog") for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("wait_s", "ms"), [(0.0001, 1), (0.5, 500), (0.0015, 2), (2.0, 2000)])
def test_retry_after_rounds_up_to_whole_milliseconds(wait_s: float, ms: int) -> None:
    assert retry_after_ms(wait_s) == ms
