"""The frontend's closed set of request errors, mapped to gRPC status codes at the API edge only."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"

    @property
    def transient(self) -> bool:
        """Whether a caller may retry the same request and expect it to succeed."""
        return self in (ErrorKind.RESOURCE_EXHAUSTED, ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED)


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
