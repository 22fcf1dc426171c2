"""kill -9 the server after acknowledgements; after a restart every acknowledged write is there."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from server.client import RecdClient
from server.domain import Interaction, ItemRecord, UserProfile
from server.gen.recd.v1 import catalog_pb2
from server.tools.bench.serverproc import free_port, wait_serving

DIM = 16


def start(data_dir: Path, address: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RECD_DIM": str(DIM),
        "RECD_DATA_DIR": str(data_dir),
        "RECD_SERVER__ADDRESS": address,
        "RECD_SERVER__METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "RECD_RANKING__RANKER": "cpu",
        "RECD_SERVER__LOG_LEVEL": "WARNING",
        "RECD_PIPELINE__BUDGET_MS": "5000",
    }
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--single-process"], env=env)
    wait_serving(address, 120, proc)
    return proc


async def write_until_killed(address: str, proc: subprocess.Popen[bytes], vectors: np.ndarray) -> list[str]:
    """Writes batches; kills the server with SIGKILL while a batch is in flight; returns acked ids."""
    client = RecdClient(address, timeout_s=30)
    acked: list[str] = []
    batch = 200
    try:
        for n, start_at in enumerate(range(0, len(vectors), batch)):
            records = [
                ItemRecord(f"it-{i}", vectors[i], {"n": str(i)}, 1.0, 0)
                for i in range(start_at, start_at + batch)
            ]
            call = asyncio.ensure_future(client.upsert_items(records))
            if n == 6:
                await asyncio.sleep(0.002)
                proc.send_signal(signal.SIGKILL)
            try:
                await call
            except grpc.aio.AioRpcError:
                break
            acked.extend(r.item_id for r in records)
    finally:
        await client.close()
    return acked


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(4000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    address = f"127.0.0.1:{free_port()}"
    proc = start(tmp_path, address)
    client = RecdClient(address, timeout_s=30)
    await client.upsert_users([UserProfile("ursula", None, {})])
    await client.record_interactions([Interaction("ursula", "before-kill", "view", 1.0, 0)])
    await client.close()
    acked = await write_until_killed(address, proc, vectors)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 1000

    proc = start(tmp_path, address)
    try:
        client = RecdClient(address, timeout_s=30)
        got = await client.catalog.GetItems(catalog_pb2.GetItemsRequest(item_ids=acked))
        assert list(got.missing_item_ids) == []
        assert [i.item_id for i in got.items] == acked
        # the index answers with them: a user whose vector is exactly an item's gets that item first
        for i in rng.choice(len(acked), 25, replace=False).tolist():
            await client.upsert_users([UserProfile(f"probe-{i}", vectors[i], {})])
            reply = await client.recommend(f"probe-{i}", k=1)
            assert reply.items[0].item_id == acked[i]
        stats = await client.stats()
        assert stats.items >= len(acked) and stats.users >= 1
        await client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def test_an_acknowledged_erasure_survives_kill_9(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    proc = start(tmp_path, address)
    client = RecdClient(address, timeout_s=30)
    try:
        for user in ("erased-1", "erased-2", "kept"):
            await client.upsert_users([UserProfile(user, np.ones(DIM, np.float32), {"lang": "en"})])
            await client.record_interactions(
                [Interaction(user, f"item-{k}", "view", 1.0, 1_700_000_000_000 + k) for k in range(5)]
            )
        await client.delete_user("erased-1")
        await client.delete_users(["erased-2"])
        # At once after the acknowledgement: the snapshot the erasure starts may not have been written.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        await client.close()

    proc = start(tmp_path, address)
    client = RecdClient(address, timeout_s=30)
    try:
        for user in ("erased-1", "erased-2"):
            held = await client.get_user(user)
            assert not held.found and list(held.interactions) == [] and list(held.seen) == []
        kept = await client.get_user("kept")
        assert kept.found and len(kept.interactions) == 5 and len(kept.seen) == 5
        assert (await client.stats()).users == 1
    finally:
        await client.close()
        proc.terminate()
        proc.wait(timeout=60)
