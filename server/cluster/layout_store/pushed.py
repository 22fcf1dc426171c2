"""The embedded default: the layout is the document each shard node keeps (`<data_dir>/node-N/layout.json`,
server/cluster/node/keeper.py), and a change is handed to every node.

Reading asks every node and takes the highest epoch. A change first checks that epoch, then hands the
document to each node, which refuses one that is not newer than its own. This is a check, not a lock:
two changes made at the same instant can each reach some nodes first. A cluster whose layout must not
race keeps it in ScyllaDB (layout_store/cql.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from server.cluster.layout import Layout
from server.cluster.layout_store.base import LayoutConflict, check_successor
from server.errors import BackendError
from shards.client import ShardClient
from shards.records import NodeLayout, ShardError

log = logging.getLogger(__name__)

_ATTEMPTS = 5


class PushedLayoutStore:
    polled = False

    def __init__(self, clients: Callable[[], Mapping[str, ShardClient]], timeout_s: float = 30.0) -> None:
        """`clients`: the nodes as they are now (the store does not own them)."""
        self._clients = clients
        self._timeout_s = timeout_s

    async def read(self) -> Layout | None:
        clients = self._clients()
        answers = await asyncio.gather(
            *(c.get_layout(self._timeout_s) for c in clients.values()), return_exceptions=True
        )
        newest: Layout | None = None
        for node, answer in zip(clients, answers, strict=True):
            if isinstance(answer, NodeLayout):
                if not answer.layout_json or answer.epoch <= (newest.epoch if newest else 0):
                    continue
                try:
                    newest = Layout.from_json(answer.layout_json)
                except ValueError as exc:
                    log.error("node %s holds an unusable layout: %s", node, exc)
            elif not isinstance(answer, Exception):
                raise answer  # cancelled
        return newest

    async def compare_and_set(self, expected_epoch: int, layout: Layout) -> None:
        check_successor(expected_epoch, layout)
        current = await self.read()
        if (current.epoch if current is not None else 0) != expected_epoch:
            raise LayoutConflict(expected_epoch, current)
        clients = self._clients()
        # Also nodes the layout no longer uses: they must stop taking writes routed by the old one.
        targets = list(dict.fromkeys([*layout.all_nodes, *clients]))
        missing = [n for n in targets if n not in clients]
        if missing:
            raise BackendError("layout", f"no client for nodes {missing}", transient=False)
        outcomes = await asyncio.gather(
            *(self._hand(clients[n], layout) for n in targets), return_exceptions=True
        )
        failed = {n: o for n, o in zip(targets, outcomes, strict=True) if isinstance(o, BaseException)}
        if not failed:
            return
        now = await self.read()
        if now is not None and now.epoch >= layout.epoch and now != layout:
            raise LayoutConflict(expected_epoch, now)
        reasons = "; ".join(f"{n}: {e}" for n, e in failed.items())
        raise BackendError("layout", f"nodes did not take layout epoch {layout.epoch}: {reasons}")

    async def _hand(self, client: ShardClient, layout: Layout) -> NodeLayout:
        last: ShardError | None = None
        for attempt in range(_ATTEMPTS):
            try:
                return await client.set_layout(layout.to_json(), False, self._timeout_s)
            except ShardError as exc:
                last = exc
                if not exc.transient:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
        assert last is not None
        raise last

    async def close(self) -> None:
        return None
