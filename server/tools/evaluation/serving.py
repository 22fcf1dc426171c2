"""The serving path, as a caller sees it: a fresh in-process server (or a given address), the training
part loaded through the public API by the loader that `recd load` uses, and Recommend for every
evaluated user over gRPC, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from server.api.server import RecdServer
from server.client import RecdClient
from server.config import Config
from server.domain import Edge, Interaction, Source
from server.runtime import Recd
from server.tools.evaluation.dataset import Dataset, UnusableInput
from server.tools.graph_build import derive_edges
from server.tools.loading.load import LoadSummary, load_dataset

# Where the item graph comes from: derived from the training interactions (as `recd graph build` does),
# the dataset's edges file as it is, or no graph.
EdgesMode = Literal["train", "dataset", "none"]
SOURCE_NAMES = {int(s): s.name for s in Source}


@dataclass(frozen=True, slots=True)
class Answer:
    item_ids: tuple[str, ...]
    sources: tuple[tuple[str, ...], ...]  # per item, the names of the sources that proposed it
    degraded: tuple[str, ...]
    model_version: str
    error: str | None = None


def in_process_config(config: Config, dim: int, budget_scale: float = 1.0) -> Config:
    """The config of a throwaway server: nothing on disk, an ephemeral port, the dataset's dimension,
    and the time budgets multiplied by `budget_scale` (the evaluation shares the machine with it)."""
    config = copy.deepcopy(config)
    config.data_dir = None
    config.dim = dim
    config.server.address = "127.0.0.1:0"
    if budget_scale != 1.0:
        config.pipeline.budget_ms *= budget_scale
        config.pipeline.steps = {
            name: dataclasses.replace(step, budget_ms=step.budget_ms * budget_scale)
            for name, step in config.pipeline.steps.items()
        }
    return config


@asynccontextmanager
async def fresh_server(config: Config) -> AsyncIterator[RecdServer]:
    from server.wiring import build_recd

    recd = build_recd(config)
    server = RecdServer(recd, config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def settle(recd: Recd) -> None:
    """After a load, lets the state the server derives in the background catch up (the shared popularity
    counts, the popularity orders built from them), so that every served answer and the exact
    computation read the same state; then warms the request path as `recd serve` does."""
    await recd.popularity_sync.refresh()  # also re-sorts the popularity orders
    await recd.warm_up()


async def load_training(
    address: str,
    dataset: Dataset,
    train: Sequence[Interaction],
    edges: EdgesMode,
    batch_size: int = 2000,
    progress: bool = True,
) -> LoadSummary:
    """Items and users from the dataset's files, the training interactions, and the graph, through the
    public API. Held-out interactions never reach the server, nor edges derived from them."""
    with tempfile.TemporaryDirectory(prefix="recd-eval-") as tmp:
        files = [*dataset.files["items"], *dataset.files.get("users", [])]
        files.append(_write_interactions(Path(tmp) / "interactions-train.parquet", train))
        if edges == "dataset":
            files.extend(dataset.files.get("edges", []))
        elif edges == "train":
            derived = derive_edges(train)
            if derived:
                files.append(_write_edges(Path(tmp) / "edges-train.parquet", derived))
        client = RecdClient(address, timeout_s=120.0)
        try:
            return await load_dataset(files, client, batch_size=batch_size, progress=progress)
        finally:
            await client.close()


async def check_dimension(address: str, dim: int) -> None:
    """A server at a given address must have the dataset's dimension, or nothing would load."""
    client = RecdClient(address, timeout_s=10.0)
    try:
        stats = await client.stats()
    except grpc.aio.AioRpcError as exc:
        raise UnusableInput(f"cannot reach recd at {address}: {exc.code().name}: {exc.details()}") from None
    finally:
        await client.close()
    if stats.dimension != dim:
        raise UnusableInput(f"the server at {address} has dimension {stats.dimension}, the dataset {dim}")


async def recommend_all(
    address: str,
    user_ids: Sequence[str],
    k: int,
    concurrency: int = 16,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> dict[str, Answer]:
    """Recommend (k, include_seen false) for every user, `concurrency` at a time; a failed RPC is an
    Answer with `error` set, not an exception."""
    client = RecdClient(address, timeout_s=timeout_s)
    gate = asyncio.Semaphore(concurrency)
    answers: dict[str, Answer] = {}
    bar = tqdm(total=len(user_ids), desc="recommend", unit="users", file=sys.stderr, disable=not progress)

    async def ask(user_id: str) -> None:
        async with gate:
            try:
                response = await client.recommend(user_id, k)
            except grpc.aio.AioRpcError as exc:
                answers[user_id] = Answer((), (), (), "", f"{exc.code().name}: {exc.details()}")
            else:
                answers[user_id] = Answer(
                    tuple(item.item_id for item in response.items),
                    tuple(tuple(SOURCE_NAMES.get(s, "?") for s in item.sources) for item in response.items),
                    tuple(response.coverage.degraded_reasons),
                    response.model_version,
                )
            bar.update(1)

    try:
        await asyncio.gather(*(ask(u) for u in user_ids))
    finally:
        bar.close()
        await client.close()
    return answers


def _write_interactions(path: Path, interactions: Sequence[Interaction]) -> Path:
    table = pa.table(
        {
            "user_id": pa.array([x.user_id for x in interactions], pa.string()),
            "item_id": pa.array([x.item_id for x in interactions], pa.string()),
            "action": pa.array([x.action for x in interactions], pa.string()),
            "weight": pa.array([x.weight for x in interactions], pa.float32()),
            "timestamp_ms": pa.array([x.timestamp_ms for x in interactions], pa.int64()),
        }
    )
    pq.write_table(table, path)
    return path


def _write_edges(path: Path, edges: Sequence[Edge]) -> Path:
    table = pa.table(
        {
            "src_item_id": pa.array([e.src_item_id for e in edges], pa.string()),
            "dst_item_id": pa.array([e.dst_item_id for e in edges], pa.string()),
            "score": pa.array([e.score for e in edges], pa.float32()),
        }
    )
    pq.write_table(table, path)
    return path
