"""Per-node health on the frontend: a circuit breaker and a window of recent search latencies.

The breaker keeps the request path from paying for a node that keeps failing: after `failures_to_open`
consecutive failures the node is skipped (its shards go to other replicas, or are reported missing at
once instead of after a timeout). It closes again when a background probe succeeds, or when a trial call
does after `open_s` (so it recovers even where nothing probes, as in embedded mode).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import numpy as np

from server import metrics

BreakerState = Literal["closed", "open", "half_open"]
_WINDOW = 128
_RECOMPUTE_EVERY = 16


class NodeHealth:
    def __init__(
        self,
        node: str,
        failures_to_open: int = 3,
        open_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self._failures_to_open = failures_to_open  # 0: never opens
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._latencies = np.zeros(_WINDOW, dtype=np.float64)
        self._observed = 0
        self._p95: float | None = None
        metrics.SHARD_NODE_UP.labels(node).set(1)

    # --- breaker ---------------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    def allow(self) -> bool:
        """Whether to send this node a request now (closed, or half-open: a trial)."""
        return self._open_until is None or self._clock() >= self._open_until

    def record_success(self, latency_s: float | None = None) -> None:
        self._failures = 0
        if self._open_until is not None:
            self._close()
        if latency_s is not None:
            self._latencies[self._observed % _WINDOW] = latency_s
            self._observed += 1
            if self._observed % _RECOMPUTE_EVERY == 0 or self._p95 is None:
                self._p95 = float(np.percentile(self._latencies[: min(self._observed, _WINDOW)], 95))

    def record_failure(self) -> None:
        self._failures += 1
        if self._open_until is not None:
            # A failed trial (half-open) or a straggler (open): stay open for another period.
            self._open_until = self._clock() + self._open_s
        elif 0 < self._failures_to_open <= self._failures:
            self._open_until = self._clock() + self._open_s
            metrics.SHARD_BREAKER_OPENED.labels(self.node).inc()
            metrics.SHARD_NODE_UP.labels(self.node).set(0)

    def _close(self) -> None:
        self._open_until = None
        self._failures = 0
        metrics.SHARD_NODE_UP.labels(self.node).set(1)

    # --- latency ---------------------------------------------------------------------------------------
    @property
    def p95_s(self) -> float | None:
        """Recent p95 of successful search calls; None until a few were seen."""
        return self._p95 if self._observed >= 8 else None


class HedgePolicy:
    """When to send a second (hedged) request for a late node's shards, within a budget.

    The budget is a token bucket filled by `budget` tokens per first-wave Search RPC (capped at `burst`),
    one token per hedged RPC: when every node is slow (overload, a 2-core box), hedging would double the
    load that causes the slowness, so hedged RPCs stay within that fraction of all.
    """

    def __init__(
        self,
        mode: Literal["off", "fixed", "p95"] = "p95",
        after_s: float = 0.02,
        min_s: float = 0.005,
        budget: float = 0.1,
        burst: float = 10.0,
    ) -> None:
        self.mode = mode
        self.after_s = after_s
        self.min_s = min_s
        self.budget = budget
        self._burst = burst
        self._tokens = burst

    def delay_s(self, health: NodeHealth) -> float | None:
        if self.mode == "off":
            return None
        if self.mode == "fixed":
            return self.after_s
        p95 = health.p95_s
        return max(self.min_s, p95 if p95 is not None else self.after_s)

    def on_calls(self, rpcs: int) -> None:
        """`rpcs` first-wave Search RPCs were sent: hedges may add `budget` of them."""
        self._tokens = min(self._burst, self._tokens + self.budget * rpcs)

    def try_take(self, rpcs: int = 1) -> bool:
        if self._tokens >= rpcs:
            self._tokens -= rpcs
            return True
        return False
