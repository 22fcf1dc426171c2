"""The layout store's narrow interface: read the cluster layout, and change it only from the epoch the
change was computed from.

Every layout change (a rebalance's phases, a roll-back) is `compare_and_set(expected_epoch, new)`: it
stores `new` only if the store still holds `expected_epoch`, and otherwise raises `LayoutConflict` with
the store left as it was. Two operators who read the same layout and change it at once: one wins, the
other is refused before it did anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from server.cluster.layout import Layout
from server.config import Config
from shards.client import ShardClient


class LayoutConflict(Exception):
    """The store does not hold the epoch a change was computed from: another change came first."""

    def __init__(self, expected_epoch: int, current: Layout | None) -> None:
        super().__init__(
            f"the cluster layout changed meanwhile: this change was computed from epoch {expected_epoch}, "
            f"the store holds {describe(current)}"
        )
        self.expected_epoch = expected_epoch
        self.current = current


def describe(layout: Layout | None) -> str:
    if layout is None:
        return "no layout"
    a = layout.current
    where = f"{a.shard_count} shards on {', '.join(a.nodes)}"
    if layout.target is None:
        return f"epoch {layout.epoch} (stable: {where})"
    b = layout.target
    towards = f"{b.shard_count} shards on {', '.join(b.nodes)}"
    return f"epoch {layout.epoch} ({layout.phase}: from {where} to {towards})"


def check_successor(expected_epoch: int, layout: Layout) -> None:
    if layout.epoch <= expected_epoch:
        raise ValueError(f"a new layout needs an epoch above {expected_epoch}, got {layout.epoch}")


class LayoutStore(Protocol):
    @property
    def polled(self) -> bool:
        """True where processes poll the store to follow it (a shared database); False where the store is
        the nodes themselves, so a change reaches them as it is made and frontends see it in their
        probes of the nodes."""
        ...

    async def read(self) -> Layout | None:
        """The stored layout; None while nothing is stored. BackendError when the store cannot be read."""
        ...

    async def compare_and_set(self, expected_epoch: int, layout: Layout) -> None:
        """Stores `layout` if the store holds epoch `expected_epoch` (0: nothing stored yet), else raises
        LayoutConflict and changes nothing. `layout.epoch` must be above `expected_epoch`."""
        ...

    async def close(self) -> None: ...


def open_layout_store(config: Config, clients: Callable[[], Mapping[str, ShardClient]]) -> LayoutStore:
    """In ScyllaDB when the real backends are configured (profiles.backend: scylla), else on the nodes
    (`clients`: the nodes to read it from and hand it to, as they are now)."""
    if config.profiles.backend == "scylla":
        from server.cluster.layout_store.cql import CqlLayoutStore

        return CqlLayoutStore(config.profiles)
    from server.cluster.layout_store.pushed import PushedLayoutStore

    return PushedLayoutStore(clients)


async def read_or_seed(store: LayoutStore, fallback: Layout) -> Layout:
    """The stored layout; an empty store is first given `fallback` (what the nodes follow), once, however
    many callers try at the same time."""
    stored = await store.read()
    if stored is not None:
        return stored
    try:
        await store.compare_and_set(0, fallback)
    except LayoutConflict as exc:
        if exc.current is not None:
            return exc.current
        raise
    return fallback
