"""`recd serve --workers 2` with mutual TLS on the public port (server.tls) and on its shard node
(cluster.tls), as real processes on 127.0.0.1: the supervisor reaches its workers' private ports and its
shard node over mTLS (server.client_tls, cluster.client_tls), every worker answers over mTLS, and a
plaintext caller or one without a certificate is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from server.client import RecdClient
from server.domain import Interaction
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.security.tls import aio_channel
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import make_catalogue
from server.tests.security.test_tls import FRESH, client_tls
from server.tests.workers.group import Group
from server.tools.certs import Pki

WORKERS = 2


def tls_sections(pki: Pki) -> dict[str, object]:
    listener = {
        "enabled": True,
        "cert_file": str(pki.server.cert),
        "key_file": str(pki.server.key),
        "client_ca_file": str(pki.ca),
        "require_client_cert": True,
    }
    client = {
        "enabled": True,
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client.cert),
        "key_file": str(pki.client.key),
    }
    return {
        "server": {"tls": listener, "client_tls": client},
        "cluster": {"tls": listener, "client_tls": client},
    }


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Group]:
    root = tmp_path_factory.mktemp("tls-group")
    group = Group(root, root / "state", WORKERS, config=tls_sections(pki))
    try:
        group.start()
        yield group
    finally:
        group.close()


async def test_every_worker_answers_over_mutual_tls(group: Group, pki: Pki) -> None:
    state = group.state()
    assert state["serving"] and all(w["ready"] for w in state["workers"]) and state["shard_nodes"]
    toy = make_catalogue(n_items=300)
    tls = client_tls(pki.ca, pki.client)
    loader = RecdClient(group.address, timeout_s=60.0, tls=tls)
    try:
        await load_toy(loader, toy)
        # A user with a history: its candidates come from the ANN search of the shard node (over mTLS).
        history = cluster_items(toy, 1, 5)
        await loader.record_interactions([Interaction("tls-user", i, "click", 1.0, 0) for i in history])
    finally:
        await loader.close()

    before = group.recommends_by_worker()
    after = before
    for _ in range(64):
        # A fresh connection each: the kernel hands each to one of the workers.
        async with aio_channel(group.address, tls, FRESH) as channel:
            reply = await recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="tls-user", k=5), timeout=20
            )
        if len(reply.items) < 5:
            # The other worker learns the items from the shards' change feed a moment after the load
            # (longer on a loaded machine); until then it knows none of them.
            await asyncio.sleep(0.1)
            continue
        after = await asyncio.to_thread(group.recommends_by_worker)
        if len([w for w, v in after.items() if v > before.get(w, 0.0)]) == WORKERS:
            break
    else:
        pytest.fail(f"not every worker answered over mTLS: {before} -> {after}")


@pytest.mark.parametrize("who", ["plaintext", "no client certificate"])
async def test_the_group_refuses_callers_it_cannot_verify(group: Group, pki: Pki, who: str) -> None:
    tls = None if who == "plaintext" else client_tls(pki.ca)
    async with aio_channel(group.address, tls, FRESH) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="tls-user", k=5), timeout=5
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
