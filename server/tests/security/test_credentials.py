"""The token recd's own clients send: read from auth.token_file at start, added to every call's metadata
(aio and blocking channels), and never echoed when the file is wrong."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from server.config import ConfigError
from server.security import credentials
from server.security.auth import new_token
from server.security.credentials import authorized, authorized_sync, read_token_file

METHOD = "/recd.v1.Recommender/Recommend"


@pytest.fixture(autouse=True)
def no_process_token() -> Iterator[None]:
    previous = credentials.process_token()
    credentials.use_token(None)
    yield
    credentials.use_token(previous)


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A server answering each call with the authorization header it received (or b"-")."""

    async def answer(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        sent = dict(context.invocation_metadata() or ())
        return str(sent.get("authorization", "-")).encode() + b"|" + str(sent.get("x-other", "-")).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "recd.v1.Recommender", {"Recommend": grpc.unary_unary_rpc_method_handler(answer)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_the_process_token_rides_on_every_call_beside_other_metadata(echo: str) -> None:
    token = new_token()
    credentials.use_token(token)
    async with authorized(grpc.aio.insecure_channel(echo)) as channel:
        call = channel.unary_unary(METHOD)
        assert await call(b"") == f"Bearer {token}|-".encode()
        assert await call(b"", metadata=(("x-other", "1"),)) == f"Bearer {token}|1".encode()

    def blocking_call() -> bytes:
        with authorized_sync(grpc.insecure_channel(echo)) as blocking:
            return bytes(blocking.unary_unary(METHOD)(b"", timeout=5))

    # Off the loop: the server answering it runs on this test's loop.
    assert await asyncio.to_thread(blocking_call) == f"Bearer {token}|-".encode()


async def test_without_a_token_the_channel_is_left_alone(echo: str) -> None:
    plain = grpc.aio.insecure_channel(echo)
    assert authorized(plain) is plain
    async with plain:
        assert await plain.unary_unary(METHOD)(b"") == b"-|-"


async def test_an_explicit_token_wins_over_the_process_token(echo: str) -> None:
    credentials.use_token(new_token())
    mine = new_token()
    async with authorized(grpc.aio.insecure_channel(echo), mine) as channel:
        assert await channel.unary_unary(METHOD)(b"") == f"Bearer {mine}|-".encode()


def test_the_cli_reads_its_token_from_the_config(tmp_path: Path) -> None:
    from server.cli import _config

    token = new_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"auth": {"token_file": str(token_file)}}))
    _config(argparse.Namespace(config=str(config_file)))
    assert credentials.process_token() == token


def test_a_token_file_that_holds_no_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("hunter2-not-a-recd-token\n")
    with pytest.raises(ConfigError) as info:
        read_token_file(str(path))
    assert "auth.token_file" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))
