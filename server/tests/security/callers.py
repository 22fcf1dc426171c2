"""Callers with fresh tokens for the auth tests, and raw calls that report only a status code."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from server.config import CallerConfig, QuotaConfig
from server.security.auth import hash_token, new_token

# scrypt at a test's cost: the parameters travel in the stored hash, so verification follows them. The
# real cost (16 MiB, tens of ms) is exercised once, in test_auth.py.
CHEAP = {"n": 2**4, "r": 1, "p": 1}


def issue(
    name: str, roles: Sequence[str], quotas: dict[str, QuotaConfig] | None = None
) -> tuple[str, CallerConfig]:
    token = new_token()
    caller = CallerConfig(
        name=name, roles=list(roles), token_hashes=[str(hash_token(token, **CHEAP))], quotas=quotas or {}
    )
    return token, caller


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def unary_code(
    channel: grpc.aio.Channel,
    method: str,
    metadata: Sequence[tuple[str, str]] = (),
    request: bytes = b"",
    timeout: float = 10.0,
) -> grpc.StatusCode:
    """The status of one unary call with raw request bytes (an empty message by default)."""
    call = channel.unary_unary(method)
    try:
        await call(request, metadata=tuple(metadata), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def stream_code(
    channel: grpc.aio.Channel, method: str, metadata: Sequence[tuple[str, str]] = (), timeout: float = 1.0
) -> grpc.StatusCode:
    """The status of a server stream once its first answer arrived (OK), it ended, or `timeout` passed
    (DEADLINE_EXCEEDED: admitted, and nothing to send yet)."""
    call = channel.unary_stream(method)(b"", metadata=tuple(metadata), timeout=timeout)
    try:
        async for _ in call:
            call.cancel()
            return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
