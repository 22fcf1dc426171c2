"""The frontend's router: item ids -> logical shards (consistent hashing) -> the nodes hosting them.

`ShardRouter` composes the parts of this package over one topology, swapped at once when the cluster
layout changes (calls already under way finish on the topology they started with): search fans out with
failover and hedging, writes go to every replica with ack groups, reads and scans take one live replica
per shard. With a cluster, a manager (server/cluster/membership) resolves the nodes, probes them, and
keeps the topology current through `ClusterHooks`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server import _core
from server.config import CandidatesConfig
from server.routing import reads
from server.routing.health import NodeHealth
from server.routing.replicas import Replicas
from server.routing.search import SearchRequest, SearchResult, fan_out, per_shard_k_for
from server.routing.topology import RoutingPolicy, ShardNode, Topology, static_topology
from server.routing.writes import Writes
from shards.client import ShardClient
from shards.records import NodeStats, QueryFilter, RecordBatch


class ClusterHooks(Protocol):
    """What the router asks of the cluster manager (server/cluster/membership/manager.py)."""

    async def ensure_started(self) -> None: ...

    async def refresh_layout(self) -> bool:
        """Fetches a newer layout, if there is one, and applies it; True if the layout changed."""
        ...

    async def close(self) -> None:
        """Stops following the cluster and closes the node clients (the manager owns them)."""
        ...


class ShardRouter:
    def __init__(
        self,
        dim: int,
        shard_count: int,
        vnodes: int,
        nodes: Sequence[ShardNode],
        *,
        policy: RoutingPolicy | None = None,
    ) -> None:
        """Static nodes (embedded mode, tests): a shard's replicas are the nodes listing it, in order.
        The router owns their clients: `close` closes them."""
        self._setup(
            dim,
            static_topology(shard_count, vnodes, nodes),
            {n.name: n.client for n in nodes},
            policy or RoutingPolicy(),
            None,
        )

    @classmethod
    def for_cluster(
        cls,
        dim: int,
        topology: Topology,
        clients: Mapping[str, ShardClient],
        policy: RoutingPolicy,
        hooks: ClusterHooks,
    ) -> ShardRouter:
        router = cls.__new__(cls)
        router._setup(dim, topology, clients, policy, hooks)
        return router

    def _setup(
        self,
        dim: int,
        topology: Topology,
        clients: Mapping[str, ShardClient],
        policy: RoutingPolicy,
        hooks: ClusterHooks | None,
    ) -> None:
        self.dim = dim
        self.policy = policy
        self._hooks = hooks
        self._topology = topology
        self._replicas = Replicas(policy)
        self._replicas.set_clients(clients)
        self._writes = Writes(
            self._replicas, policy, lambda: self._topology, hooks.refresh_layout if hooks else None
        )

    # --- topology -------------------------------------------------------------------------------------
    def set_topology(self, topology: Topology, clients: Mapping[str, ShardClient]) -> None:
        """Swaps routing at once; calls already under way finish on the topology they started with."""
        self._replicas.set_clients(clients)
        self._topology = topology

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def epoch(self) -> int:
        return self._topology.epoch

    @property
    def shard_count(self) -> int:
        return self._topology.read.shard_count

    @property
    def ring(self) -> _core.HashRing:
        return self._topology.read.ring

    @property
    def node_names(self) -> list[str]:
        return self._replicas.names

    def client(self, node: str) -> ShardClient:
        return self._replicas.client(node)

    def health(self, node: str) -> NodeHealth:
        return self._replicas.health(node)

    def readable_replicas(self, shard: int) -> list[tuple[str, ShardClient]]:
        """The replicas of a logical shard (of the placement reads follow) as (node name, client), in
        read preference order: ring order, nodes whose circuit is open last."""
        return [(n, self._replicas.client(n)) for n in self._replicas.order(self._topology.read, shard)]

    def shard_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.uint32]:
        return self._topology.read.ring.owner(list(item_ids))

    def per_shard_k(self, k: int, factor: float, shard_k: int = CandidatesConfig.shard_k) -> int:
        """Hits to ask of each shard for a merged top-k (per_shard_k_for): callers pass the configured
        pipeline.candidates.shard_k and shard_k_factor; `shard_k` defaults to the config's default."""
        return per_shard_k_for(k, self.shard_count, shard_k, factor)

    # --- life cycle -----------------------------------------------------------------------------------
    async def ensure_started(self) -> None:
        """With a cluster: the first call resolves node addresses, adopts the newest layout and starts the
        background probes (all of which need a running event loop)."""
        if self._hooks is not None:
            await self._hooks.ensure_started()

    async def close(self) -> None:
        """Closes what the router owns: the static nodes' clients, or (with a cluster) the manager's.
        Missed writes still held for a node are lost with the frontend (a repair catches the node up)."""
        await self._writes.handoff.close()
        if self._hooks is not None:
            await self._hooks.close()
            return
        for name in self._replicas.names:
            await self._replicas.client(name).close()

    # --- search, writes, reads ------------------------------------------------------------------------
    async def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        per_shard_k: int,
        ef: int,
        exclude: list[npt.NDArray[np.uint64]] | None,
        timeout_s: float,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> SearchResult:
        """Merged top-k per query. `exclude[i]`: sorted, unique labels query i must not return;
        `filters[i]`: the attribute filter its hits must pass, applied inside each shard's search."""
        await self.ensure_started()
        request = SearchRequest(queries, k, per_shard_k, ef, exclude, filters)
        return await fan_out(self._replicas, self._topology.read, self.policy, request, timeout_s)

    async def upsert(self, batch: RecordBatch, timeout_s: float) -> int:
        """Durable once this returns: every record is in the write-ahead log of `write_acks` replicas
        of its shard (of each placement, while a rebalance is under way); the other replicas get it
        directly or by hinted handoff. A refused write may still have been applied (at-least-once)."""
        await self.ensure_started()
        return await self._writes.upsert(batch, timeout_s)

    async def delete(self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float) -> int:
        """Returns how many of the items were live."""
        await self.ensure_started()
        return await self._writes.delete(item_ids, labels, timeout_s)

    async def fetch(
        self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float
    ) -> RecordBatch:
        await self.ensure_started()
        return await reads.fetch(self._replicas, self._topology.read, self.dim, item_ids, labels, timeout_s)

    async def scan_all(self, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        """Every live item of every logical shard, each shard once from a live replica (failing over to
        the next one, from the shard's start: an item can come twice)."""
        await self.ensure_started()
        async for batch in reads.scan_all(self._replicas, self._topology.read, batch_size):
            yield batch

    def pending_hints(self, node: str | None = None) -> int:
        """Missed writes held for `node` (or every node) until it answers again."""
        return self._writes.handoff.pending(node)

    async def replay_hints(self) -> int:
        """One handoff round now (the background one runs every hint_replay_interval_s); returns how many
        missed writes reached their nodes."""
        return await self._writes.handoff.replay()

    async def stats(self, timeout_s: float | None = 5.0) -> NodeStats:
        """Each logical shard's statistics (items, deleted, capacity, log size) once, from a replica that
        answered; `layout_epoch` is the router's."""
        await self.ensure_started()
        topology = self._topology
        return await reads.stats(self._replicas, topology.read, self.dim, topology.epoch, timeout_s)
