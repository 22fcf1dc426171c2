"""One fuzz run: per method, Hypothesis draws raw and structured requests and sends each to a target;
every answer's status is counted. Nothing but a status that says what was wrong with the request, or
the answer itself, is acceptable:

- INTERNAL, UNKNOWN, DATA_LOSS: a request got past validation and broke something (a bug);
- UNAVAILABLE: the same on a server whose backends all live in its process (there is nothing to be
  unavailable; the shard refusing a vector the frontend accepted was such a case);
- DEADLINE_EXCEEDED: a request held the server for the whole call timeout (a hang);
- and after each method the server must still be healthy (health SERVING, a normal Recommend answered).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from server.tools.fuzz.messages import messages, raw_requests
from server.tools.fuzz.target import FuzzTarget, Method

UNEXPECTED = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAVAILABLE,
    }
)
HANG = grpc.StatusCode.DEADLINE_EXCEEDED
MODES = ("raw", "structured")


class UnexpectedAnswer(AssertionError):
    pass


@dataclass
class MethodRun:
    method: str
    mode: str
    codes: Counter[str] = field(default_factory=Counter)
    unexpected: list[bytes] = field(default_factory=list)
    seconds: float = 0.0
    healthy_after: bool = True

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    @property
    def hangs(self) -> int:
        return self.codes[HANG.name]

    @property
    def bad(self) -> int:
        return sum(self.codes[c.name] for c in UNEXPECTED)


def requests_for(method: Method, mode: str, dim: int) -> st.SearchStrategy[bytes]:
    if mode == "raw":
        return raw_requests(method.request, dim)
    return messages(method.request, dim).map(lambda m: m.SerializeToString())


def fuzz(
    target: FuzzTarget,
    method: Method,
    mode: str,
    *,
    dim: int,
    examples: int,
    timeout_s: float = 10.0,
    strict: bool = True,
) -> MethodRun:
    """Sends `examples` requests (derandomised: the same ones every run) of `mode` to `method`.
    `strict`: the first unexpected answer fails the run (Hypothesis shrinks it to a minimal request and
    reports it); otherwise every answer is counted and the unexpected requests kept."""
    run = MethodRun(method.name, mode)

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if strict else [])],
        report_multiple_bugs=False,
    )
    @given(requests_for(method, mode, dim))
    def send(raw: bytes) -> None:
        code = target.call(method, raw, timeout_s)
        run.codes[code.name] += 1
        if code in UNEXPECTED or (code == HANG and not method.streaming):
            run.unexpected.append(raw)
            if strict:
                raise UnexpectedAnswer(f"{method.path} answered {code.name} to {raw!r}")

    started = time.perf_counter()
    try:
        send()
    finally:
        run.seconds = time.perf_counter() - started
        run.healthy_after = target.healthy()
    return run
