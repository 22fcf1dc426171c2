"""A shard node process (`recd shard --node-id N`): the shards the layout places on node-N, served over gRPC.

The node starts from the layout it kept (node/keeper.py); a node that kept none, from the stored one when
the layout lives in ScyllaDB (layout_store/cql.py), else from the layout the config describes (epoch 1).
With a polled store it then follows the store (node/follower.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from server.cluster.layout import Layout, layout_from_config, node_name
from server.cluster.layout_store.base import LayoutStore, open_layout_store
from server.cluster.node.follower import LayoutFollower
from server.cluster.node.keeper import NodeLayoutKeeper, load_layout
from server.config import Config
from server.errors import BackendError
from server.lifecycle import wait_for_stop_signal
from server.security.tls import check_listener
from server.wiring import build_shard_host
from shards.client import GrpcShardClient
from shards.service import serve_node

log = logging.getLogger(__name__)


def node_dir(config: Config, node_id: int) -> Path | None:
    return Path(config.data_dir) / f"node-{node_id}" if config.data_dir is not None else None


async def run_node(
    config: Config,
    node_id: int,
    address: str | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, then stops gracefully (final snapshots)."""
    name = node_name(node_id)
    directory = node_dir(config, node_id)
    store = open_layout_store(config, lambda: {})  # a node asks no other node
    try:
        # What it kept comes first even where the store is newer: the newer layout is then handed over
        # by the follower like any change (shards it newly hosts start empty, writes are fenced).
        layout = load_layout(directory)
        if layout is None and store.polled:
            layout = await _stored_layout(store, config, name)
        await _serve(config, name, directory, layout or layout_from_config(config), address, store, on_ready)
    finally:
        await store.close()


async def _serve(
    config: Config,
    name: str,
    directory: Path | None,
    layout: Layout,
    address: str | None,
    store: LayoutStore,
    on_ready: Callable[[int], None] | None,
) -> None:
    listen = address or layout.addresses.get(name)
    if listen is None:
        raise SystemExit(
            f"{name} is not in the cluster layout (epoch {layout.epoch}: {', '.join(layout.all_nodes)}); "
            "give it --address to start it empty and add it with `recd shards rebalance --add-node`"
        )
    check_listener(listen, config.cluster.tls, "cluster.tls")  # before its shards are opened
    host = build_shard_host(config, layout.hosted(name), directory)
    keeper = NodeLayoutKeeper(name, host, directory, layout)
    server = await serve_node(
        host,
        listen,
        max_message_bytes=config.server.max_message_bytes,
        layout=keeper,
        tls=config.cluster.tls,
        auth=config.auth,
    )
    log.info(
        "%s serving shards %s on port %d (layout epoch %d)", name, host.shard_ids, server.port, layout.epoch
    )
    following: asyncio.Task[None] | None = None
    itself: GrpcShardClient | None = None
    if store.polled:
        # The node hands itself the stored layout through its own SetLayout: the same write fence as
        # a layout an operator hands it.
        itself = GrpcShardClient(_local_target(listen, server.port), tls=config.cluster.client_tls)
        node = itself

        async def apply(stored: Layout) -> object:
            return await node.set_layout(stored.to_json(), False, 30.0)

        follower = LayoutFollower(
            store, lambda: keeper.epoch, apply, config.cluster.probe_interval_ms / 1000.0, name
        )
        following = asyncio.get_running_loop().create_task(follower.run())
    if on_ready is not None:
        on_ready(server.port)
    try:
        await wait_for_stop_signal()
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        if itself is not None:
            await itself.close()
        await server.stop(config.server.grace_s)
        await asyncio.to_thread(host.close)


async def _stored_layout(store: LayoutStore, config: Config, name: str) -> Layout | None:
    """The stored layout, or None when the store cannot say now (the follower catches up later)."""
    try:
        return await asyncio.wait_for(store.read(), config.profiles.connect_timeout_s * 2)
    except (BackendError, TimeoutError) as exc:
        log.warning("%s: cannot read the stored layout (%s); starting from the config's", name, exc)
        return None


def _local_target(listen: str, port: int) -> str:
    """This node's own address to call: its listening host, or loopback where it listens on every one."""
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
