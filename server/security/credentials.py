"""The bearer token recd's own clients send: edge -> frontends, frontend -> shard nodes, the CLI and tools.

A process has one service identity: `auth.token_file` of its config, read once at start
(`use_token_file`). Every channel recd makes is passed through `authorized` / `authorized_sync`, which add
`authorization: Bearer <token>` to each call when a token is set and return the channel untouched
otherwise. The aio side is a thin channel wrapper that merges one metadata pair into each call, rather
than a grpc.aio client interceptor, whose interception chain costs on every call of the shard fan-out.
Works over TLS and plaintext alike (gRPC's call credentials are refused on plaintext channels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from server.config import Config, ConfigError, load_config
from server.security.auth import token_id

_token: str | None = None


def read_token_file(path: str, where: str = "auth.token_file") -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path!r} ({exc.strerror})") from None
    if token_id(token) is None:
        # Never echo the file's contents: it may be a token of another format, still a secret.
        raise ConfigError(f"{where}: {path!r} does not hold a recd token (from `recd security hash-token`)")
    return token


def use_token(token: str | None) -> None:
    """This process's token for every channel made from now on (None: send none)."""
    global _token
    _token = token


def use_token_file(path: str | None) -> None:
    use_token(read_token_file(path) if path else None)


def process_token() -> str | None:
    return _token


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class _WithMetadata:
    """A multi-callable that adds the token to the call's metadata."""

    __slots__ = ("_inner", "_pair")

    def __init__(self, inner: Any, pair: tuple[tuple[str, str], ...]) -> None:
        self._inner = inner
        self._pair = pair

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        merged = self._pair if metadata is None else (*tuple(metadata), *self._pair)
        return self._inner(*args, metadata=merged, **kwargs)


class TokenChannel(grpc.aio.Channel):
    """A grpc.aio channel whose every call carries the token."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self._channel = channel
        self._pair = _metadata(token)

    async def __aenter__(self) -> TokenChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def _wrap(self, make: Callable[..., Any], method: str, *args: Any, **kwargs: Any) -> Any:
        return _WithMetadata(make(method, *args, **kwargs), self._pair)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_unary, method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_stream, method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.stream_unary, method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.stream_stream, method, *args, **kwargs)


def authorized(channel: grpc.aio.Channel, token: str | None = None) -> grpc.aio.Channel:
    """`channel` sending `token` (default: this process's token) on every call; itself when there is none."""
    token = token if token is not None else _token
    return channel if token is None else TokenChannel(channel, token)


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    """The blocking channels' side (start-up probes): few calls, so gRPC's own interceptor will do."""

    def __init__(self, token: str) -> None:
        self._pair = _metadata(token)

    def _details(self, details: Any) -> Any:
        metadata: Sequence[tuple[str, str]] = tuple(details.metadata or ()) + self._pair
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def authorized_sync(channel: grpc.Channel, token: str | None = None) -> grpc.Channel:
    """The blocking counterpart of `authorized`."""
    token = token if token is not None else _token
    return channel if token is None else grpc.intercept_channel(channel, _SyncToken(token))


def load_process_config(path: str | None) -> Config:
    """The config of a recd command, with the process's identity on its calls to other recd servers
    (edge -> frontends, frontend -> shard nodes, the CLI -> a frontend): the token of auth.token_file,
    sent by every channel it makes."""
    config = load_config(path)
    use_token_file(config.auth.token_file)
    return config
