"""Shard errors across gRPC: a status code from a node becomes a kind, and a per-shard error in a search
answer keeps its kind."""

from __future__ import annotations

import grpc
import pytest

from shards import convert
from shards.records import ErrorKind, ShardError

# code a node answered with -> the kind the shard client raises
OF_STATUS = [
    (grpc.StatusCode.INVALID_ARGUMENT, ErrorKind.INVALID_ARGUMENT),
    (grpc.StatusCode.NOT_FOUND, ErrorKind.NOT_FOUND),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ErrorKind.DEADLINE_EXCEEDED),
    (grpc.StatusCode.UNAVAILABLE, ErrorKind.UNAVAILABLE),
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorKind.STALE_LAYOUT),
    (grpc.StatusCode.INTERNAL, ErrorKind.INTERNAL),
    # worth another replica: the router fails over on UNAVAILABLE
    (grpc.StatusCode.CANCELLED, ErrorKind.UNAVAILABLE),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorKind.UNAVAILABLE),
    (grpc.StatusCode.UNKNOWN, ErrorKind.INTERNAL),
    (None, ErrorKind.INTERNAL),
]


@pytest.mark.parametrize(("code", "kind"), OF_STATUS, ids=[str(c) for c, _ in OF_STATUS])
def test_error_of_status(code: grpc.StatusCode | None, kind: ErrorKind) -> None:
    error = convert.error_of_status(code, "details")
    assert error == ShardError("details", kind)


@pytest.mark.parametrize("kind", list(ErrorKind), ids=[k.name for k in ErrorKind])
def test_a_shard_error_answers_its_kinds_status_and_travels_in_a_search_answer(kind: ErrorKind) -> None:
    error = ShardError(f"shard 3: {kind.name.lower()}", kind)
    assert convert.status_of(error) is kind.status
    assert convert.hits_from_proto(convert.hits_to_proto(3, error), 1, 1) == error
