"""Per-node health (breaker, latency window) and the hedge budget."""

from __future__ import annotations

import pytest

from server.routing.health import NodeHealth
from server.routing.hedging import HedgePolicy


def test_breaker_and_p95() -> None:
    now = [0.0]
    health = NodeHealth("n", failures_to_open=2, open_s=1.0, clock=lambda: now[0])
    health.record_failure()
    assert health.allow()
    health.record_failure()
    assert not health.allow() and health.state == "open"
    now[0] = 1.5
    assert health.allow() and health.state == "half_open"
    health.record_failure()  # failed trial: open again
    assert not health.allow()
    health.record_success(0.01)
    assert health.state == "closed"
    for i in range(100):
        health.record_success(0.001 * (i % 10 + 1))
    assert health.p95_s is not None and 0.009 <= health.p95_s <= 0.0101
    policy = HedgePolicy("p95", after_s=0.05, min_s=0.002)
    assert policy.delay_s(health) == pytest.approx(health.p95_s)
    assert HedgePolicy("off").delay_s(health) is None


def test_hedge_budget_is_a_fraction_of_rpcs() -> None:
    policy = HedgePolicy("fixed", budget=0.5, burst=2.0)
    assert policy.try_take(2) and not policy.try_take(1)
    policy.on_calls(4)  # 4 first-wave RPCs earn 2 hedged ones
    assert policy.try_take(2) and not policy.try_take(1)
    policy.on_calls(100)
    assert policy.try_take(2) and not policy.try_take(1)  # capped at the burst
