"""`recd serve --workers 2` with auth on, as real processes: the workers call the group's shard node with
the group's own token (auth.token_file), callers are admitted by role on every worker, and the
supervisor's health checks need no credentials."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.client import RecdClient
from server.domain import Interaction
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import make_catalogue
from server.tests.security.callers import issue
from server.tests.security.test_secured_servers import process_token
from server.tests.workers.group import Group


@dataclasses.dataclass
class SecuredGroup:
    group: Group
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredGroup]:
    root = tmp_path_factory.mktemp("auth-group")
    tokens, callers = {}, []
    for name, roles in (("group", ["internal"]), ("loader", ["catalog", "feedback"]), ("app", ["recommend"])):
        tokens[name], caller = issue(name, roles)
        callers.append(dataclasses.asdict(caller))
    token_file = Path(root) / "group.token"
    token_file.write_text(tokens["group"] + "\n")
    token_file.chmod(0o600)
    auth = {"enabled": True, "callers": callers, "token_file": str(token_file)}
    group = Group(root, root / "state", 2, config={"auth": auth})
    try:
        group.start()
        yield SecuredGroup(group, tokens)
    finally:
        group.close()


async def test_a_secured_group_serves_callers_by_role(secured: SecuredGroup) -> None:
    toy = make_catalogue(n_items=300)
    with process_token(secured.tokens["loader"]):
        loader = RecdClient(secured.group.address, timeout_s=60.0)
    try:
        # The write reaches the shard node only with the worker's own (internal) token.
        await load_toy(loader, toy)
        # A history, so that Recommend for u1 searches the shards (a cold user gets popular items only).
        history = cluster_items(toy, 1, 6)
        await loader.record_interactions([Interaction("u1", item, "click", 1.0, 0) for item in history])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await loader.recommend("u1", k=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await loader.close()

    for _ in range(8):  # fresh connections, so both workers answer some
        with process_token(secured.tokens["app"]):
            app = RecdClient(secured.group.address, timeout_s=60.0)
        try:
            answer = await app.recommend("u1", k=5)
            # Every shard searched: the worker's Search calls carried the group's internal token.
            assert answer.coverage.shards_ok == answer.coverage.shards_total == 20
            assert len(answer.items) == 5
        finally:
            await app.close()

    anonymous = RecdClient(secured.group.address, timeout_s=10.0)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await anonymous.recommend("u1", k=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await anonymous.close()
    assert "Traceback" not in secured.group.log_tail(100_000)
