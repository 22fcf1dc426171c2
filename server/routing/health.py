"""Per-node health as the router sees it: a circuit breaker and a window of recent search latencies.

The breaker keeps the request path from paying for a node that keeps failing: after `failures_to_open`
consecutive failures the node is skipped (its shards go to other replicas, or are reported missing at
once instead of after a timeout). It closes again when a background probe (server/cluster/membership)
succeeds, or when a trial call does after `open_s` (so it recovers where nothing probes, as in embedded
mode).
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
