"""What the router routes by: items -> logical shards (a hash ring), logical shards -> replica nodes, and
the layout epoch writes are fenced by; and the policy it routes with.

With a cluster (server/cluster) the topology is the layout's view (`topology_of`): while a rebalance is
under way reads follow one placement and writes go to both. Without one (embedded mode, tests) it is
static (`static_topology`): a shard's replicas are the nodes that list it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from server import _core
from server.cluster.layout import Layout, Placement, shard_names
from server.routing.hedging import HedgePolicy
from shards.client import ShardClient


@dataclass(frozen=True, slots=True)
class ShardNode:
    """A static node: its client and the logical shards it holds."""

    name: str
    client: ShardClient
    shard_ids: tuple[int, ...]


@dataclass(frozen=True)
class Routing:
    """One placement as the router uses it: items -> shards, shards -> replica nodes in ring order."""

    shard_count: int
    ring: _core.HashRing
    replicas: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Topology:
    epoch: int  # 0: no cluster layout (embedded / static nodes); writes are not fenced
    read: Routing
    writes: tuple[Routing, ...]


@dataclass(frozen=True)
class RoutingPolicy:
    write_acks: int = 0  # 0: every replica
    # Hinted handoff (handoff.py): missed writes held at most, and how often a returning node is tried.
    hint_max_items: int = 200_000
    hint_replay_interval_s: float = 0.5
    hedge: HedgePolicy = field(default_factory=lambda: HedgePolicy("off"))
    node_deadline_fraction: float = 0.9
    node_deadline_margin_s: float = 0.001
    # 0: no breaker. The default for static nodes: an in-process host has no "down" to skip, and
    # opening on a few slow searches would turn a moment of overload into a second without ANN.
    breaker_failures: int = 0
    breaker_open_s: float = 1.0


def static_topology(shard_count: int, vnodes: int, nodes: Sequence[ShardNode]) -> Topology:
    replicas = tuple(tuple(n.name for n in nodes if s in n.shard_ids) for s in range(shard_count))
    missing = [s for s, r in enumerate(replicas) if not r]
    if missing:
        raise ValueError(f"no node hosts shards {missing}")
    routing = Routing(shard_count, _core.HashRing(shard_names(shard_count), vnodes), replicas)
    return Topology(0, routing, (routing,))


def routing_of(placement: Placement) -> Routing:
    return Routing(placement.shard_count, placement.item_ring, placement.replicas)


def topology_of(layout: Layout) -> Topology:
    """The router's view of a cluster layout."""
    return Topology(layout.epoch, routing_of(layout.read), tuple(routing_of(p) for p in layout.writes))
