"""What travels over the state node's socket: which methods of which role it serves, and how.

One gRPC service per role on a unix socket (`recd.internal.ProfileStore`, `.ItemGraph`, `.Cache`), one
method per method of that role's Protocol (server/backends/base.py), through generic handlers and no
.proto: both ends are this code base at one version, started together by one supervisor.

Arguments and results are pickled. Unpickling runs whatever code the bytes ask for, so this is safe only
because every peer is a process of the same user in the same group: the socket lives in the group's
private directory (mode 0700, made by the supervisor) and is itself mode 0600. It is never a network
address and must not become one; a state node reachable by anyone else would need a real schema.

`item_popularity` differs from the Protocol: its answer (every counted item) is large and changes only
with writes, so the caller sends the version it holds, `(timeout_s, version)`, and gets `(version, None)`
back while that is current, or `(version, pickled counts)`. The cache also takes `set_many(entries)`, a
list of (key, value, ttl_s): the sets a batch issues together travel as one call.

The domain's dataclasses (Interaction, UserProfile, UserRecord, Edge, Exposure, Outcome) travel as
plain tuples: pickle spends ~2 us on each frozen slotted dataclass each way (3 ms for a batch's 32 users
of 50 interactions), against ~0.1 us for a tuple. `encode_*` / `decode_*` below convert at the two ends.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from server.backends.base import UserExport, UserRecord
from server.domain import Edge, Exposure, Interaction, Outcome, UserProfile
from server.errors import BackendError

PROFILES = "recd.internal.ProfileStore"
GRAPH = "recd.internal.ItemGraph"
CACHE = "recd.internal.Cache"

# A group runs one state node per role left embedded (each its own process and socket), so that the
# graph's expansions, the profile reads and the cache calls of every worker do not queue on one event loop.
ROLES: dict[str, str] = {"profiles": PROFILES, "graph": GRAPH, "cache": CACHE}


def socket_for(template: str, role: str) -> str:
    """The socket of `role`'s state node, from the path the supervisor gives its workers: `{role}` in it
    names the role (a template without it sends every role to one node hosting them all)."""
    return template.replace("{role}", role)


METHODS: dict[str, tuple[str, ...]] = {
    PROFILES: (
        "read_users",
        "get_profile",
        "upsert_profiles",
        "append_interactions",
        "recent_interactions",
        "seen_items",
        "item_popularity",
        "count_users",
        "delete_users",
        "export_user",
        "record_exposures",
        "read_exposures",
        "record_outcomes",
        "scan_exposures",
        "scan_outcomes",
    ),
    GRAPH: ("upsert_edges", "neighbours", "neighbours_many", "count_edges"),
    CACHE: ("get", "get_many", "set", "set_many", "delete"),
}

# Payloads past this are (un)pickled on a worker thread: a 200k-item popularity answer takes tens of
# milliseconds, which the event loop (serving requests) must not stall for.
OFF_LOOP_BYTES = 256 * 1024

# Status codes a caller may retry or fail open on (the state node restarting, a deadline too short).
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


async def dumps_async(value: Any, off_loop: bool = False) -> bytes:
    return await asyncio.to_thread(dumps, value) if off_loop else dumps(value)


async def loads_async(data: bytes) -> Any:
    return await asyncio.to_thread(loads, data) if len(data) > OFF_LOOP_BYTES else loads(data)


def status_of(exc: Exception) -> grpc.StatusCode:
    """The state node's answer to a store's exception (BackendError keeps its transient flag)."""
    if isinstance(exc, BackendError):
        return grpc.StatusCode.UNAVAILABLE if exc.transient else grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, ValueError | TypeError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def error_of(backend: str, method: str, exc: grpc.aio.AioRpcError) -> Exception:
    """The caller's exception for a failed call: ValueError for a bad argument, else BackendError."""
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(exc.details())
    return BackendError(backend, f"state node {method}: {code.name}: {exc.details()}", code in TRANSIENT)


# --- the domain's dataclasses as tuples ------------------------------------------------------------------
ProfileTuple = tuple[str, Any, dict[str, str]]


def _profile_out(p: UserProfile | None) -> ProfileTuple | None:
    return None if p is None else (p.user_id, p.embedding, p.attributes)


def _profile_in(t: ProfileTuple | None) -> UserProfile | None:
    return None if t is None else UserProfile(*t)


def _interactions_out(items: Sequence[Interaction]) -> list[tuple[str, str, str, float, int]]:
    return [(i.user_id, i.item_id, i.action, i.weight, i.timestamp_ms) for i in items]


def _interactions_in(rows: Sequence[tuple[str, str, str, float, int]]) -> list[Interaction]:
    return [Interaction(*row) for row in rows]


def _users_out(records: Sequence[UserRecord]) -> list[tuple[Any, ...]]:
    # The user's id is the caller's own argument: each history row leaves it out.
    return [
        (
            _profile_out(r.profile),
            [(i.item_id, i.action, i.weight, i.timestamp_ms) for i in r.history],
            r.seen,
        )
        for r in records
    ]


def _users_in(args: tuple[Any, ...], rows: Sequence[tuple[Any, ...]]) -> list[UserRecord]:
    return [
        UserRecord(_profile_in(profile), [Interaction(user_id, *h) for h in history], seen)
        for user_id, (profile, history, seen) in zip(args[0], rows, strict=True)
    ]


def _export_out(e: UserExport) -> tuple[Any, ...]:
    return (
        _profile_out(e.profile),
        _interactions_out(e.interactions),
        e.interactions_truncated,
        e.seen,
        e.seen_last_ms,
        e.exposures_held,
        e.outcomes_held,
    )


def _export_in(t: tuple[Any, ...]) -> UserExport:
    profile, interactions, truncated, seen, seen_last_ms, exposures_held, outcomes_held = t
    return UserExport(
        _profile_in(profile),
        _interactions_in(interactions),
        truncated,
        seen,
        seen_last_ms,
        exposures_held,
        outcomes_held,
    )


ExposureTuple = tuple[str, int, tuple[str, ...], str, float, float]
OutcomeTuple = tuple[str, str, str, float, int, int, str]


def _exposures_out(items: Sequence[Exposure]) -> list[ExposureTuple]:
    return [(e.user_id, e.served_at_ms, tuple(e.item_ids), e.arm, e.latency_ms, e.diversity) for e in items]


def _exposures_in(rows: Sequence[ExposureTuple]) -> list[Exposure]:
    return [Exposure(*row) for row in rows]


def _exposures_by_user_out(lists: Sequence[Sequence[Exposure]]) -> list[list[tuple[Any, ...]]]:
    # The user's id is the caller's own argument: each row leaves it out.
    return [
        [(e.served_at_ms, e.item_ids, e.arm, e.latency_ms, e.diversity) for e in found] for found in lists
    ]


def _exposures_by_user_in(
    args: tuple[Any, ...], lists: Sequence[Sequence[tuple[Any, ...]]]
) -> list[list[Exposure]]:
    return [[Exposure(user_id, *row) for row in rows] for user_id, rows in zip(args[0], lists, strict=True)]


def _outcomes_out(items: Sequence[Outcome]) -> list[OutcomeTuple]:
    return [(o.user_id, o.item_id, o.action, o.weight, o.at_ms, o.served_at_ms, o.arm) for o in items]


def _outcomes_in(rows: Sequence[OutcomeTuple]) -> list[Outcome]:
    return [Outcome(*row) for row in rows]


Convert = Callable[[tuple[Any, ...]], tuple[Any, ...]]
_ARGS_OUT: dict[tuple[str, str], Convert] = {
    (PROFILES, "append_interactions"): lambda a: (_interactions_out(a[0]),),
    (PROFILES, "upsert_profiles"): lambda a: ([_profile_out(p) for p in a[0]],),
    (PROFILES, "record_exposures"): lambda a: (_exposures_out(a[0]), *a[1:]),
    (PROFILES, "record_outcomes"): lambda a: (_outcomes_out(a[0]), *a[1:]),
    (GRAPH, "upsert_edges"): lambda a: ([(e.src_item_id, e.dst_item_id, e.score) for e in a[0]],),
}
_ARGS_IN: dict[tuple[str, str], Convert] = {
    (PROFILES, "append_interactions"): lambda a: (_interactions_in(a[0]),),
    (PROFILES, "upsert_profiles"): lambda a: ([_profile_in(t) for t in a[0]],),
    (PROFILES, "record_exposures"): lambda a: (_exposures_in(a[0]), *a[1:]),
    (PROFILES, "record_outcomes"): lambda a: (_outcomes_in(a[0]), *a[1:]),
    (GRAPH, "upsert_edges"): lambda a: ([Edge(*t) for t in a[0]],),
}
_RESULT_OUT: dict[tuple[str, str], Callable[[Any], Any]] = {
    (PROFILES, "read_users"): _users_out,
    (PROFILES, "get_profile"): _profile_out,
    (PROFILES, "recent_interactions"): _interactions_out,
    (PROFILES, "export_user"): _export_out,
    (PROFILES, "read_exposures"): _exposures_by_user_out,
    (PROFILES, "scan_exposures"): _exposures_out,
    (PROFILES, "scan_outcomes"): _outcomes_out,
}
_RESULT_IN: dict[tuple[str, str], Callable[[tuple[Any, ...], Any], Any]] = {
    (PROFILES, "read_users"): _users_in,
    (PROFILES, "get_profile"): lambda _, t: _profile_in(t),
    (PROFILES, "recent_interactions"): lambda _, rows: _interactions_in(rows),
    (PROFILES, "export_user"): lambda _, t: _export_in(t),
    (PROFILES, "read_exposures"): _exposures_by_user_in,
    (PROFILES, "scan_exposures"): lambda _, rows: _exposures_in(rows),
    (PROFILES, "scan_outcomes"): lambda _, rows: _outcomes_in(rows),
}


def encode_args(service: str, method: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    convert = _ARGS_OUT.get((service, method))
    return args if convert is None else convert(args)


def decode_args(service: str, method: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    convert = _ARGS_IN.get((service, method))
    return args if convert is None else convert(args)


def encode_result(service: str, method: str, result: Any) -> Any:
    convert = _RESULT_OUT.get((service, method))
    return result if convert is None else convert(result)


def decode_result(service: str, method: str, args: tuple[Any, ...], result: Any) -> Any:
    convert = _RESULT_IN.get((service, method))
    return result if convert is None else convert(args, result)
