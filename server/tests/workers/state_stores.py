"""The state node's proxies as contract-test subjects: a real StateNode (server/workers/state_node.py)
serving one embedded store on a real unix socket, and the proxy a worker would use in front of it.

The node runs in the test's event loop rather than in a process of its own, so that each contract test
gets a fresh, empty store in milliseconds; the process around it is what tests/workers/test_group.py
covers. Closing the proxy stops the node (and closes its store).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from server.backends.base import Cache, ItemGraph, ProfileStore
from server.backends.memory_cache import InMemoryCache
from server.backends.memory_graph import InMemoryItemGraph
from server.backends.memory_profiles import InMemoryProfileStore
from server.workers.state_node import StateNode
from server.workers.state_proxies import StateCache, StateItemGraph, StateProfileStore

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def _node(
    profiles: ProfileStore | None = None, graph: ItemGraph | None = None, cache: Cache | None = None
) -> tuple[StateNode, Path]:
    # Not under pytest's tmp_path: a unix socket path must stay under 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="recd-state-"))
    node = StateNode(str(directory / "state.sock"), profiles, graph, cache)
    await node.start()
    return node, directory


async def _stop(node: StateNode, directory: Path) -> None:
    await node.stop(None)
    shutil.rmtree(directory, ignore_errors=True)


class _NodeProfiles(StateProfileStore):
    def __init__(self, node: StateNode, directory: Path) -> None:
        super().__init__(node.socket_path, 10.0, MAX_MESSAGE_BYTES)
        self._node, self._dir = node, directory

    async def close(self) -> None:
        await super().close()
        await _stop(self._node, self._dir)


class _NodeGraph(StateItemGraph):
    def __init__(self, node: StateNode, directory: Path) -> None:
        super().__init__(node.socket_path, 10.0, MAX_MESSAGE_BYTES)
        self._node, self._dir = node, directory

    async def close(self) -> None:
        await super().close()
        await _stop(self._node, self._dir)


class _NodeCache(StateCache):
    def __init__(self, node: StateNode, directory: Path) -> None:
        # Generous: a loaded 2-core box must not turn contract checks into misses.
        super().__init__(node.socket_path, 5.0, MAX_MESSAGE_BYTES)
        self._node, self._dir = node, directory

    async def close(self) -> None:
        await super().close()
        await _stop(self._node, self._dir)


async def profiles_on_state_node(data_dir: Path | None, history_limit: int, seen_limit: int) -> ProfileStore:
    store = InMemoryProfileStore(data_dir, history_limit, seen_limit=seen_limit, group_commit_window_s=0.0)
    return _NodeProfiles(*await _node(profiles=store))


async def graph_on_state_node(data_dir: Path | None) -> ItemGraph:
    return _NodeGraph(*await _node(graph=InMemoryItemGraph(data_dir, group_commit_window_s=0.0)))


async def cache_on_state_node(max_bytes: int) -> Cache:
    return _NodeCache(*await _node(cache=InMemoryCache(max_bytes)))
