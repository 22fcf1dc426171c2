"""ErrorKind: one closed enum for the frontend and the shard nodes, each kind with one gRPC status code and
a transient flag."""

from __future__ import annotations

import grpc
import pytest

from server.errors import ErrorKind, kind_of_status

# kind, its status code, transient
TABLE = [
    (ErrorKind.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, False),
    (ErrorKind.NOT_FOUND, grpc.StatusCode.NOT_FOUND, False),
    (ErrorKind.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (ErrorKind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, True),
    (ErrorKind.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED, True),
    (ErrorKind.INTERNAL, grpc.StatusCode.INTERNAL, False),
    (ErrorKind.STALE_LAYOUT, grpc.StatusCode.FAILED_PRECONDITION, True),
]


def test_the_table_covers_every_kind() -> None:
    assert [kind for kind, _, _ in TABLE] == list(ErrorKind)


@pytest.mark.parametrize(("kind", "status", "transient"), TABLE, ids=[k.name for k, _, _ in TABLE])
def test_kind_status_and_transient(kind: ErrorKind, status: grpc.StatusCode, transient: bool) -> None:
    assert kind.status is status
    assert kind.transient is transient
    assert kind_of_status(status) is kind


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.PERMISSION_DENIED, None])
def test_a_status_no_kind_has_is_internal(code: grpc.StatusCode | None) -> None:
    assert kind_of_status(code) is ErrorKind.INTERNAL
