"""The frontend's side of a cluster: the router over remote shard nodes, kept up to date.

In the background, every `probe_interval_ms`: a Stats call to every node. A success closes the node's
circuit (so a restarted node is used again without restarting the frontend); a failure counts towards
opening it (so a dead node is skipped even before traffic finds out). Stats also carries the layout
epoch each node follows: a higher one than ours means a rebalance moved on, and the layout is read from
the layout store (server/cluster/layout_store) and applied; a polled store (ScyllaDB) is also read every
round. A write a node refuses as stale reads it too. DNS names are re-resolved every `resolve_interval_s`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import time
from collections.abc import Callable

import grpc

from server import metrics
from server.addresses import resolve_host
from server.cluster.layout import Layout, layout_from_config
from server.cluster.layout_store.base import LayoutStore, open_layout_store
from server.cluster.membership.directory import NodeDirectory, Resolver
from server.config import ClientTlsConfig, Config
from server.errors import BackendError
from server.gen.recd.v1 import shard_pb2, shard_pb2_grpc
from server.routing.hedging import HedgePolicy
from server.routing.router import ShardRouter
from server.routing.topology import RoutingPolicy, topology_of
from server.security.credentials import authorized_sync
from server.security.tls import ClientFilesWatch, sync_channel
from shards.client import GrpcShardClient, ShardClient
from shards.records import NodeStats, ShardError

log = logging.getLogger(__name__)


def newest_layout_now(configured: Layout, timeout_s: float, tls: ClientTlsConfig | None = None) -> Layout:
    """The newest layout the configured nodes follow, asked with blocking calls: the frontend is being
    built (no event loop to await on yet) and what it scans at start depends on it."""

    def ask(address: str) -> Layout | None:
        try:
            with authorized_sync(sync_channel(address, tls, where="cluster.client_tls")) as channel:
                reply = shard_pb2_grpc.ShardStub(channel).GetLayout(
                    shard_pb2.ShardGetLayoutRequest(), timeout=timeout_s
                )
            return Layout.from_json(reply.layout_json) if reply.layout_json else None
        except (grpc.RpcError, ValueError):
            return None

    with cf.ThreadPoolExecutor(max(1, len(configured.addresses))) as pool:
        found = [x for x in pool.map(ask, configured.addresses.values()) if x is not None]
    return max([configured, *found], key=lambda x: x.epoch)


def routing_policy(config: Config) -> RoutingPolicy:
    c = config.cluster
    return RoutingPolicy(
        write_acks=c.write_acks,
        hint_max_items=c.hint_max_items,
        hint_replay_interval_s=c.hint_replay_interval_ms / 1000.0,
        hedge=HedgePolicy(c.hedge, c.hedge_after_ms / 1000.0, c.hedge_min_ms / 1000.0, c.hedge_budget),
        node_deadline_fraction=c.node_deadline_fraction,
        breaker_failures=c.breaker_failures,
        breaker_open_s=c.breaker_open_s,
    )


class ClusterManager:
    def __init__(
        self,
        config: Config,
        *,
        layout: Layout | None = None,
        make_client: Callable[[str], ShardClient] | None = None,
        resolver: Resolver = resolve_host,
        store: LayoutStore | None = None,
    ) -> None:
        """`store`: where the layout lives (default: the config's, server/cluster/layout_store); the
        manager owns it."""
        self._config = config
        c = config.cluster
        self._layout = layout or newest_layout_now(
            layout_from_config(config), c.probe_timeout_ms / 1000.0, c.client_tls
        )

        def grpc_client(target: str) -> ShardClient:
            return GrpcShardClient(
                target,
                max_message_bytes=config.server.max_message_bytes,
                max_reconnect_backoff_ms=c.max_reconnect_backoff_ms,
                tls=c.client_tls,
            )

        self._directory = NodeDirectory(make_client or grpc_client, resolver)
        self._directory.set_unresolved(self._layout.addresses)
        self._store = store or open_layout_store(config, self._directory.clients)
        self.router = ShardRouter.for_cluster(
            config.dim,
            topology_of(self._layout),
            self._directory.clients(),
            routing_policy(config),
            self,
        )
        self._probe_s = c.probe_interval_ms / 1000.0
        self._probe_timeout_s = c.probe_timeout_ms / 1000.0
        self._resolve_s = c.resolve_interval_s
        self._client_files = ClientFilesWatch(c.client_tls, "cluster.client_tls")
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._store_failing = False
        metrics.LAYOUT_EPOCH.set(self._layout.epoch)

    @property
    def layout(self) -> Layout:
        return self._layout

    # --- ClusterHooks -----------------------------------------------------------------------------------
    async def ensure_started(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self._follow_addresses()
            # The layout may have moved on (a rebalance) since the config was written: route by the store.
            await self.refresh_layout()
            self._monitor = asyncio.get_running_loop().create_task(self._run_monitor())
            self._started = True

    async def refresh_layout(self) -> bool:
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            try:
                stored = await self._store.read()
            except BackendError as exc:
                if not self._store_failing:  # once, not every probe round
                    log.warning("cannot read the cluster layout: %s", exc)
                self._store_failing = True
                return False
            if self._store_failing:
                log.info("the cluster layout can be read again")
            self._store_failing = False
            if stored is None or stored.epoch <= self._layout.epoch:
                return False
            await self.apply(stored)
            return True

    async def apply(self, layout: Layout) -> None:
        if layout.epoch <= self._layout.epoch:
            return
        self._layout = layout
        await self._directory.update(layout.addresses)
        self.router.set_topology(topology_of(layout), self._directory.clients())
        metrics.LAYOUT_EPOCH.set(layout.epoch)
        log.info(
            "cluster layout epoch %d (%s): %d shards on %s",
            layout.epoch,
            layout.phase,
            layout.read.shard_count,
            ", ".join(layout.all_nodes),
        )

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        await self._directory.close()
        await self._store.close()

    # --- background -------------------------------------------------------------------------------------
    async def _follow_addresses(self) -> None:
        if await self._directory.update(self._layout.addresses):
            self.router.set_topology(self.router.topology, self._directory.clients())

    async def _run_monitor(self) -> None:
        next_resolve = time.monotonic() + self._resolve_s
        while True:
            await asyncio.sleep(self._probe_s)
            try:
                await self.probe_all()
                if time.monotonic() >= next_resolve:
                    next_resolve = time.monotonic() + self._resolve_s
                    await self._follow_addresses()
                    if self._client_files.changed():
                        self._directory.renew_all()
                        self.router.set_topology(self.router.topology, self._directory.clients())
            except Exception:  # the monitor must outlive any one bad round
                log.exception("cluster monitor round failed")

    async def probe_all(self) -> None:
        clients = self._directory.clients()
        answers = await asyncio.gather(
            *(c.stats(self._probe_timeout_s) for c in clients.values()), return_exceptions=True
        )
        newest = self._layout.epoch
        for node, answer in zip(clients, answers, strict=True):
            health = self.router.health(node)
            if isinstance(answer, NodeStats):
                health.record_success()
                metrics.SHARD_PROBES.labels(node, "ok").inc()
                newest = max(newest, answer.layout_epoch)
            elif isinstance(answer, ShardError):
                health.record_failure()
                metrics.SHARD_PROBES.labels(node, "error").inc()
            elif isinstance(answer, BaseException):
                raise answer
        if newest > self._layout.epoch or self._store.polled:
            await self.refresh_layout()
