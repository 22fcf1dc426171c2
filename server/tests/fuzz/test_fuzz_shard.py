"""Fuzzing every RPC of the internal Shard API on a real shard node on 127.0.0.1: a caller that reaches it
(a misbehaving frontend, or anyone on the network where it runs without TLS) gets statuses, never an
INTERNAL/UNKNOWN answer, and the node stays healthy."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.tools.fuzz.run import MODES, fuzz
from server.tools.fuzz.target import SHARD_SERVICES, FuzzTarget, Method, methods_of, shard_node

DIM = 8
EXAMPLES = int(os.environ.get("RECD_FUZZ_EXAMPLES", "100")) // 2
METHODS = methods_of(SHARD_SERVICES)


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    target = shard_node(DIM)
    try:
        assert target.healthy()
        yield target
    finally:
        target.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_fuzzed_shard_requests_get_no_internal_or_unknown_answer(
    target: FuzzTarget, method: Method, mode: str
) -> None:
    run = fuzz(target, method, mode, dim=DIM, examples=EXAMPLES)
    assert run.requests >= 1
    assert run.bad == 0 and (run.hangs == 0 or method.streaming), run.codes
    assert run.healthy_after, f"the shard node is not healthy after fuzzing {method.path} ({mode})"
