"""`recd schema apply` and `recd graph build`: operator commands over the configured backends.

- `schema apply` creates what the real backends need before recd serves: the CQL keyspace and tables of
  DESIGN.md (profiles.backend: scylla) and the uniqueness constraint on Item.id (graph.backend: neo4j).
  Both are idempotent; embedded backends need nothing.
- `graph build` reads every interaction from the configured profile store, derives SIMILAR_TO edges
  from co-interactions (server.tools.graph_build) and writes them through the configured item graph, so the
  same command works on the embedded and the real backends. On embedded backends it opens recd's data
  directory itself: run it while the server is stopped (one writer per log).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from server.config import Config, load_config
from server.domain import Edge, Interaction
from server.errors import BackendError

# Edges per upsert_edges call: one progress line each (the graph batches further inside).
_WRITE_CHUNK = 20_000
_PROGRESS_EVERY = 200_000


def add_graph_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `recd graph build` (the caller adds --config)."""
    parser.add_argument("--top-n", type=int, default=20, help="edges kept per item, best first")
    parser.add_argument("--window", type=int, default=10, help="co-occurrence window in a user's history")
    parser.add_argument("--min-count", type=int, default=2, help="users a pair needs to become an edge")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- schema apply -----------------------------------------------------------------------------------------
def cmd_schema_apply(args: argparse.Namespace) -> int:
    config = load_config(getattr(args, "config", None))
    try:
        _apply_profiles_schema(config)
        asyncio.run(_apply_graph_schema(config))
    except (BackendError, OSError) as exc:
        _say(f"schema apply failed: {exc}")
        return 1
    except Exception as exc:  # the drivers' own errors (NoHostAvailable, ServiceUnavailable, ...)
        _say(f"schema apply failed: {type(exc).__name__}: {exc}")
        return 1
    return 0


def _apply_profiles_schema(config: Config) -> None:
    profiles = config.profiles
    if profiles.backend != "scylla":
        print(f"profiles: backend {profiles.backend!r} needs no schema")
        return
    from server.backends.scylla import apply_schema

    statements = apply_schema(profiles)
    where = ",".join(profiles.hosts)
    print(f"profiles: keyspace {profiles.keyspace} on {where}:{profiles.port}: {len(statements)} statements")


async def _apply_graph_schema(config: Config) -> None:
    if config.graph.backend != "neo4j":
        print(f"graph: backend {config.graph.backend!r} needs no schema")
        return
    from server.backends.neo4j_graph import Neo4jItemGraph

    graph = Neo4jItemGraph(config.graph)
    try:
        await graph.start()
    finally:
        await graph.close()
    print(f"graph: uniqueness constraint on :{config.graph.item_label}(id) at {config.graph.uri} in place")


# --- graph build ------------------------------------------------------------------------------------------
def cmd_graph_build(args: argparse.Namespace) -> int:
    config = load_config(getattr(args, "config", None))
    try:
        edges = asyncio.run(
            build_graph_from_interactions(
                config,
                top_n=getattr(args, "top_n", 20),
                window=getattr(args, "window", 10),
                min_count=getattr(args, "min_count", 2),
            )
        )
    except BackendError as exc:
        _say(f"graph build failed: {exc}")
        return 1
    print(f"graph build: {edges} SIMILAR_TO edges written")
    return 0


async def build_graph_from_interactions(
    config: Config, top_n: int = 20, window: int = 10, min_count: int = 2
) -> int:
    """Reads all interactions, derives edges, writes them; returns the number of edges written."""
    from server.tools.graph_build import derive_edge_arrays
    from server.wiring import build_graph, build_profiles

    store = build_profiles(config)
    graph = build_graph(config)
    try:
        started = time.monotonic()
        # Interned as integer codes while streaming: the whole history as three int64 arrays, not as
        # millions of Interaction objects.
        user_index: dict[str, int] = {}
        item_index: dict[str, int] = {}
        users, items, times = array("q"), array("q"), array("q")
        async for it in _all_interactions(store, config):
            users.append(user_index.setdefault(it.user_id, len(user_index)))
            items.append(item_index.setdefault(it.item_id, len(item_index)))
            times.append(it.timestamp_ms)
            if len(users) % _PROGRESS_EVERY == 0:
                _say(f"read {len(users):,} interactions ({time.monotonic() - started:.0f}s)")
        _say(f"read {len(users):,} interactions of {len(user_index):,} users on {len(item_index):,} items")
        src, dst, score = derive_edge_arrays(
            np.frombuffer(users, dtype=np.int64),
            np.frombuffer(items, dtype=np.int64),
            np.frombuffer(times, dtype=np.int64),
            top_n=top_n,
            window=window,
            min_count=min_count,
        )
        item_ids = list(item_index)
        _say(f"derived {len(src):,} edges ({time.monotonic() - started:.0f}s); writing")
        for start in range(0, len(src), _WRITE_CHUNK):
            end = start + _WRITE_CHUNK
            chunk = [
                Edge(item_ids[s], item_ids[d], float(w))
                for s, d, w in zip(
                    src[start:end].tolist(), dst[start:end].tolist(), score[start:end].tolist(), strict=True
                )
            ]
            await graph.upsert_edges(chunk)
            _say(f"wrote {min(end, len(src)):,}/{len(src):,} edges")
        return len(src)
    finally:
        await store.close()
        await graph.close()


async def _all_interactions(store: Any, config: Config) -> AsyncIterator[Interaction]:
    """The store's full scan when it has one; else each known user's history (embedded store)."""
    scan = getattr(store, "iter_interactions", None)
    if scan is not None:
        async for it in scan():
            yield it
        return
    known = getattr(store, "known_user_ids", None)
    if known is None:
        raise BackendError(
            "profiles", f"{type(store).__name__} cannot list its interactions", transient=False
        )
    for user_id in known():
        for it in await store.recent_interactions(user_id, config.profiles.history_limit, 60.0):
            yield it
