"""A shard node process (`recd shard --node-id N`): the shards the layout places on node-N, served over gRPC.

The node keeps the latest layout it was given in `<data_dir>/node-N/layout.json` (written atomically
before it is followed), so a restart resumes the layout it had, whatever the config file says; a node
that never had one starts from the layout the config describes (epoch 1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from server.cluster.layout import Layout, layout_from_config, node_name
from server.config import Config
from server.lifecycle import wait_for_stop_signal
from shards.host import ShardHost
from shards.records import ErrorKind, IndexParams, NodeLayout, ShardError, invalid
from shards.service import serve_node

log = logging.getLogger(__name__)

LAYOUT_FILE = "layout.json"


def node_dir(config: Config, node_id: int) -> Path | None:
    return Path(config.data_dir) / f"node-{node_id}" if config.data_dir is not None else None


def load_layout(directory: Path | None) -> Layout | None:
    if directory is None or not (directory / LAYOUT_FILE).exists():
        return None
    return Layout.from_json((directory / LAYOUT_FILE).read_text())


def save_layout(directory: Path | None, layout: Layout) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f"{LAYOUT_FILE}.tmp"
    with open(temp, "w") as f:
        f.write(layout.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, directory / LAYOUT_FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeLayoutKeeper:
    """The LayoutKeeper of shards/service.py: follows layouts by opening, receiving and dropping shards."""

    def __init__(self, name: str, host: ShardHost, directory: Path | None, layout: Layout) -> None:
        self.name = name
        self._host = host
        self._dir = directory
        self._layout = layout
        self._lock = threading.Lock()
        self.incarnation = time.time_ns()
        host.set_receiving(layout.receiving(name))

    @property
    def epoch(self) -> int:
        return self._layout.epoch

    @property
    def layout(self) -> Layout:
        return self._layout

    def current(self) -> NodeLayout:
        layout = self._layout
        return NodeLayout(layout.epoch, layout.to_json(), self._host.shard_ids, self.name, self.incarnation)

    def adopt(self, layout_json: str, drop_unplaced: bool) -> NodeLayout:
        try:
            layout = Layout.from_json(layout_json)
        except ValueError as exc:
            raise invalid(f"layout_json: {exc}") from None
        with self._lock:
            old = self._layout
            if layout.epoch < old.epoch or (layout.epoch == old.epoch and layout != old):
                raise ShardError(
                    f"layout epoch {layout.epoch} is not newer than this node's {old.epoch}",
                    ErrorKind.INVALID_ARGUMENT,
                )
            save_layout(self._dir, layout)
            hosted = layout.hosted(self.name)
            # A shard newly placed here starts empty: whatever an earlier stint left is stale.
            opened = self._host.add_shards([s for s in hosted if s not in old.hosted(self.name)], fresh=True)
            opened += self._host.add_shards(hosted)  # placed all along but missing (should not happen)
            self._host.set_receiving(layout.receiving(self.name))
            dropped = (
                self._host.drop_shards([s for s in self._host.shard_ids if s not in hosted])
                if drop_unplaced
                else []
            )
            self._layout = layout
        log.info(
            "%s: layout epoch %d (%s); opened shards %s, dropped %s; hosting %s",
            self.name,
            layout.epoch,
            layout.phase,
            opened,
            dropped,
            self._host.shard_ids,
        )
        return self.current()


def index_params(config: Config) -> IndexParams:
    idx = config.shards.index
    return IndexParams(
        dim=config.dim,
        space="ip",
        m=idx.m,
        ef_construction=idx.ef_construction,
        ef_search=idx.ef_search,
        initial_capacity=idx.initial_capacity,
    )


async def run_node(
    config: Config,
    node_id: int,
    address: str | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, then stops gracefully (final snapshots)."""
    name = node_name(node_id)
    directory = node_dir(config, node_id)
    layout = load_layout(directory) or layout_from_config(config)
    listen = address or layout.addresses.get(name)
    if listen is None:
        raise SystemExit(
            f"{name} is not in the cluster layout (epoch {layout.epoch}: {', '.join(layout.all_nodes)}); "
            "give it --address to start it empty and add it with `recd shards rebalance --add-node`"
        )
    host = ShardHost(
        index_params(config),
        directory,
        layout.hosted(name),
        snapshot_every_records=config.shards.snapshot_every_records,
        group_commit_window_s=config.shards.group_commit_window_ms / 1000.0,
    )
    keeper = NodeLayoutKeeper(name, host, directory, layout)
    server = await serve_node(host, listen, max_message_bytes=config.server.max_message_bytes, layout=keeper)
    log.info(
        "%s serving shards %s on port %d (layout epoch %d)", name, host.shard_ids, server.port, layout.epoch
    )
    if on_ready is not None:
        on_ready(server.port)
    try:
        await wait_for_stop_signal()
    finally:
        await server.stop(config.server.grace_s)
        await asyncio.to_thread(host.close)
