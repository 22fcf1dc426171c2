"""recd's one closed set of error kinds, the frontend's and the shard nodes' alike: each says whether it is
transient and has one gRPC status code, which only the gRPC edges (server/api/errors.py, shards/service.py
and the shard client in shards/convert.py) convert to and from."""

from __future__ import annotations

import enum

import grpc


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"
    # A write carried another cluster layout epoch than the shard node follows: the data may have moved.
    STALE_LAYOUT = "stale_layout"

    @property
    def transient(self) -> bool:
        """Whether a caller may retry the same request (or ask another replica) and expect it to succeed;
        a stale layout succeeds once the caller has refreshed its layout."""
        return self in _TRANSIENT

    @property
    def status(self) -> grpc.StatusCode:
        return _STATUS[self]


_TRANSIENT = frozenset(
    {ErrorKind.RESOURCE_EXHAUSTED, ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED, ErrorKind.STALE_LAYOUT}
)
_STATUS = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.STALE_LAYOUT: grpc.StatusCode.FAILED_PRECONDITION,
}
_KIND_OF_STATUS = {status: kind for kind, status in _STATUS.items()}


def kind_of_status(code: grpc.StatusCode | None) -> ErrorKind:
    """The kind a status code stands for; INTERNAL for a code no kind maps to (or none)."""
    return _KIND_OF_STATUS.get(code, ErrorKind.INTERNAL) if code is not None else ErrorKind.INTERNAL


class RecdError(Exception):
    """An error a caller should see, with a message that says what to fix."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> RecdError:
    return RecdError(ErrorKind.INVALID_ARGUMENT, message)


def not_found(message: str) -> RecdError:
    return RecdError(ErrorKind.NOT_FOUND, message)


def unavailable(message: str) -> RecdError:
    return RecdError(ErrorKind.UNAVAILABLE, message)


class BackendError(Exception):
    """A backend (store, graph, cache, shard) failed; fail-open steps turn it into a degraded answer."""

    def __init__(self, backend: str, message: str, transient: bool = True) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.transient = transient
