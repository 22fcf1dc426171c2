"""Hedged reads: a late node's shards are also asked of the next replica, and the first answer wins."""

from __future__ import annotations

from typing import Literal

from server.routing.health import NodeHealth


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
