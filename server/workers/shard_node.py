"""A shard node of a worker group (`python -m server.workers.shard_node`), started by the supervisor when
`cluster.nodes` is empty.

It is a cluster node (server/cluster/node: the Shard gRPC service, a layout keeper for the layout the
supervisor's node list gives) with one difference: its shards live where a single frontend keeps them,
in data_dir/shards/shard-NNNNN, not in data_dir/node-N. The group's nodes hold one copy of each shard
between them (replication 1), so no two of them open one shard directory, and the same data directory
serves `recd serve --single-process`, `recd demo` and a group of any number of shard nodes alike. The
layout is not kept on disk: the group's is always the one its supervisor starts it with (no rebalancing
within a group; a node that dies is restarted on the same address).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from server.cli import run_server_loop
from server.cluster.layout import layout_from_config, node_name
from server.cluster.node.keeper import NodeLayoutKeeper
from server.config import Config, load_config
from server.lifecycle import stop_signal
from server.logs import setup_logging
from server.metrics import serve_metrics
from server.security.credentials import use_token_file
from server.tracing.setup import setup_tracing
from server.wiring import build_shard_host
from server.workers.control import follow_supervisor
from shards.service import serve_node

log = logging.getLogger("server.workers.shard_node")  # also when run as __main__


async def run_group_node(config: Config, node_id: int, address: str) -> None:
    """Serves until SIGTERM/SIGINT (or the supervisor's end), then drains and writes final snapshots."""
    stop = stop_signal()  # first: a stop while the shards open still ends with their final snapshots
    name = node_name(node_id)
    layout = layout_from_config(config)
    host = await asyncio.to_thread(build_shard_host, config, list(layout.hosted(name)))
    keeper = NodeLayoutKeeper(name, host, None, layout)
    try:
        server = await serve_node(
            host,
            address,
            max_message_bytes=config.server.max_message_bytes,
            layout=keeper,
            tls=config.cluster.tls,
            auth=config.auth,
        )
    except BaseException:
        await asyncio.to_thread(host.close)
        raise
    log.info("%s serving shards %s on %s", name, host.shard_ids, address)
    try:
        await stop.wait()
    finally:
        await server.stop(config.server.grace_s)
        await asyncio.to_thread(host.close)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.workers.shard_node")
    parser.add_argument("--config")
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--metrics-address", help="serve this node's /metrics (the supervisor merges it)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    use_token_file(config.auth.token_file)  # its calls to itself carry the group's token
    setup_logging(
        config.server.log_level, config.server.log_format, {"process": f"shard-node-{args.node_id}"}
    )
    if args.metrics_address:
        # Not cluster.node_metrics_address: the group's nodes share one machine, each needs its own port.
        serve_metrics(args.metrics_address)
    setup_tracing(config.tracing, "shard", f"shard-node-{args.node_id}")

    async def run() -> None:
        follow_supervisor()
        await run_group_node(config, args.node_id, args.address)

    run_server_loop(run(), config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
