"""The cluster's CLI: `recd shards plan|rebalance` and `recd cluster up|down` (`recd shard --node-id N`
is in server/cli.py, next to the other long-running commands)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.cluster.layout import Layout, Placement, layout_from_config, node_name, parse_nodes
from server.cluster.layout_store.base import LayoutConflict, LayoutStore, open_layout_store, read_or_seed
from server.config import Config, load_config
from server.errors import BackendError
from server.security.credentials import use_token_file
from shards.client import GrpcShardClient, ShardClient
from shards.records import NodeLayout, ShardError

ConfigArg = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def _load_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    # The nodes are called as this process's caller (the token of auth.token_file; see README, Security).
    use_token_file(config.auth.token_file)
    return config


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_config: ConfigArg) -> None:
    shards = sub.add_parser("shards", help="placement of logical shards on shard nodes")
    shards_sub = shards.add_subparsers(dest="shards_command", required=True)
    for name, func, text in (
        ("plan", cmd_plan, "show what moves when nodes or the shard count change"),
        ("rebalance", cmd_rebalance, "move it online, while serving"),
    ):
        p = with_config(shards_sub.add_parser(name, help=text))
        p.add_argument("--shards", type=int, help="target number of logical shards")
        p.add_argument("--add-node", action="append", default=[], metavar="ID=HOST:PORT")
        p.add_argument("--remove-node", action="append", default=[], type=int, metavar="ID")
        p.add_argument("--replication", type=int, help="target replication factor")
        if name == "plan":
            p.add_argument("--sample", type=int, default=100_000, help="synthetic item ids to measure with")
            p.add_argument("--offline", action="store_true", help="plan from the config, not the nodes")
        else:
            p.add_argument("--grace-s", type=float, default=3.0, help="wait before deleting moved data")
            p.add_argument(
                "--max-rate", type=float, help="items scanned per second at most (leaves CPU to live traffic)"
            )
        p.set_defaults(func=func)
    p = with_config(shards_sub.add_parser("check", help="compare every shard's replicas, item by item"))
    p.add_argument(
        "--repair-from",
        type=int,
        metavar="ID",
        help="first make the other replicas of node ID's shards match node ID (run while writes are quiet)",
    )
    p.set_defaults(func=cmd_check)

    cluster = sub.add_parser("cluster", help="a local cluster on 127.0.0.1 (tests, benchmarks)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    p = with_config(cluster_sub.add_parser("up", help="start a frontend and N shard nodes"))
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--replication", type=int, default=0, help="0: 2 with two nodes or more")
    p.add_argument("--dir", default="data/cluster")
    p.add_argument("--no-frontend", action="store_true")
    p.set_defaults(func=cmd_cluster_up)
    p = cluster_sub.add_parser("down", help="stop what `recd cluster up` started")
    p.add_argument("--dir", default="data/cluster")
    p.set_defaults(func=cmd_cluster_down)


# --- shards plan / rebalance --------------------------------------------------------------------------
async def newest_layout(
    clients: dict[str, ShardClient], fallback: Layout, timeout_s: float = 5.0
) -> tuple[Layout, list[str]]:
    """The highest-epoch layout any node follows (or `fallback`), and the nodes that did not answer."""
    answers = await asyncio.gather(
        *(c.get_layout(timeout_s) for c in clients.values()), return_exceptions=True
    )
    newest = fallback
    silent = []
    for name, answer in zip(clients, answers, strict=True):
        if not isinstance(answer, NodeLayout):
            silent.append(name)
        elif answer.layout_json and answer.epoch > newest.epoch:
            newest = Layout.from_json(answer.layout_json)
    return newest, silent


def _target(args: argparse.Namespace, layout: Layout) -> tuple[Placement, dict[str, str]]:
    base = layout.target if layout.target is not None else layout.current
    # parse_nodes numbers bare entries by position; --add-node wants explicit ids.
    for entry in args.add_node:
        if "=" not in entry:
            raise SystemExit(f"--add-node wants ID=HOST:PORT, got {entry!r}")
    added = parse_nodes(args.add_node)
    removed = {node_name(i) for i in args.remove_node}
    nodes = [n for n in (*base.nodes, *added) if n not in removed]
    placement = Placement(
        args.shards or base.shard_count,
        tuple(nodes),
        args.replication or base.replication,
        base.vnodes,
        base.node_vnodes,
    )
    return placement, added


def _clients(config: Config, addresses: dict[str, str]) -> dict[str, ShardClient]:
    return {
        name: GrpcShardClient(
            address,
            max_message_bytes=config.server.max_message_bytes,
            max_reconnect_backoff_ms=500,
            tls=config.cluster.client_tls,
        )
        for name, address in addresses.items()
    }


async def _close(clients: dict[str, ShardClient]) -> None:
    for client in clients.values():
        await client.close()


def cmd_plan(args: argparse.Namespace) -> int:
    from server.tools.cluster.rebalance import format_plan, make_plan, sample_ids

    config = _load_config(args)
    layout = layout_from_config(config)

    async def run() -> str:
        nonlocal layout
        note = "from the config"
        if not args.offline:
            clients = _clients(config, dict(layout.addresses))
            store = open_layout_store(config, lambda: clients)
            try:
                stored = await store.read()
            except BackendError as exc:
                stored, note = None, f"from the config (the layout store did not answer: {exc})"
            finally:
                await store.close()
                await _close(clients)
            if stored is not None:
                where = "stored in ScyllaDB:" if store.polled else "nodes follow"
                layout, note = stored, f"{where} epoch {stored.epoch} ({stored.phase})"
        target, _ = _target(args, layout)
        plan = make_plan(layout.read, target, sample_ids(args.sample), f"{args.sample:,} sample ids")
        return f"current layout: {note}\n{format_plan(plan)}"

    print(asyncio.run(run()))
    return 0


def cmd_rebalance(args: argparse.Namespace) -> int:
    from server.tools.cluster.rebalance import RebalanceError, Rebalancer

    config = _load_config(args)
    configured = layout_from_config(config)

    async def run() -> int:
        probe = _clients(config, dict(configured.addresses))
        store: LayoutStore = open_layout_store(config, lambda: probe)
        try:
            followed, _ = await newest_layout(probe, configured)
            # A store still empty (the layout just moved into ScyllaDB) starts from what the nodes follow.
            layout = await read_or_seed(store, followed)
        except BackendError as exc:
            print(f"cannot read the cluster layout: {exc}")
            return 1
        finally:
            await store.close()
            await _close(probe)
        changes = args.shards or args.add_node or args.remove_node or args.replication
        target, added = _target(args, layout) if changes else (None, {})
        clients = _clients(config, {**layout.addresses, **added})
        store = open_layout_store(config, lambda: clients)
        rebalancer = Rebalancer(
            clients,
            store=store,
            grace_s=args.grace_s,
            progress=lambda line: print(line, flush=True),
            max_items_per_s=args.max_rate,
        )
        try:
            _, silent = await newest_layout(clients, layout)
            if silent:
                print(f"not answering: {', '.join(silent)}; every node must be up to rebalance")
                return 1
            final = await rebalancer.run(layout, target, added)
        except LayoutConflict as exc:
            print(f"rebalance refused, nothing changed: {exc}; another rebalance is under way or just ran")
            return 1
        except RebalanceError as exc:
            print(f"rebalance stopped: {exc}")
            return 1
        finally:
            await store.close()
            await _close(clients)
        r = rebalancer.report
        print(
            f"layout epoch {r.from_epoch} -> {final.epoch}: {final.current.shard_count} shards on"
            f" {len(final.current.nodes)} nodes; {r.items_moved:,} of {r.items_scanned:,} items changed"
            f" shard, {r.records_copied:,} records copied, {r.records_deleted:,} deleted, in {r.seconds:.1f}s"
        )
        return 0

    return asyncio.run(run())


def cmd_check(args: argparse.Namespace) -> int:
    """Exit status 0: every shard's replicas alike (after the repair, with --repair-from); 1: some diverge;
    2: some could not be read (or repaired)."""
    from server.tools.cluster.check import check_replicas, repair_from

    config = _load_config(args)
    configured = layout_from_config(config)

    async def run() -> int:
        clients = _clients(config, dict(configured.addresses))
        try:
            layout, _ = await newest_layout(clients, configured)
            missing = set(layout.addresses) - set(clients)
            clients.update(_clients(config, {n: layout.addresses[n] for n in missing}))
            if args.repair_from is not None:
                source = node_name(args.repair_from)
                if source not in layout.current.nodes:
                    nodes = ", ".join(layout.current.nodes)
                    print(f"--repair-from: {source} is not in the layout (epoch {layout.epoch}: {nodes})")
                    return 2
                for repair in await repair_from(layout, clients, source):
                    done = [
                        f"{n}: {repair.copied[n]} written, {repair.deleted[n]} deleted" for n in repair.copied
                    ]
                    print(f"shard {repair.shard} repaired from {source}: {'; '.join(done)}")
            checks = await check_replicas(layout, clients)
        except ShardError as exc:
            print(f"repair stopped: {exc}")
            return 2
        finally:
            await _close(clients)
        for check in checks:
            print(check.describe())
        diverged = sum(1 for c in checks if not c.alike and not c.unreadable)
        unread = sum(1 for c in checks if c.unreadable)
        print(f"layout epoch {layout.epoch}: {len(checks)} shards, {diverged} diverged, {unread} not checked")
        return 2 if unread else 1 if diverged else 0

    return asyncio.run(run())


# --- cluster up / down --------------------------------------------------------------------------------
def cmd_cluster_up(args: argparse.Namespace) -> int:
    import yaml

    from server.cluster.local import LocalCluster

    extra: dict[str, Any] = {}
    if args.config:
        extra = yaml.safe_load(Path(args.config).read_text()) or {}
        extra.pop("cluster", None)  # the local cluster writes its own node list
    # Its frontend is one process over the nodes unless the config asks for a worker group.
    extra.setdefault("workers", {}).setdefault("count", 0)
    cluster = LocalCluster(Path(args.dir), args.nodes, args.replication, extra)
    try:
        cluster.up(frontend=not args.no_frontend)
    except BaseException:
        cluster.down()
        raise
    state = cluster.state
    print(
        json.dumps(
            {
                "frontend": cluster.frontend_address,
                "metrics": cluster.metrics_address,
                "nodes": {k: v.address for k, v in state.nodes.items()},
                "node_metrics": {k: v.metrics for k, v in state.nodes.items()},
                "config": str(cluster.config_path),
            }
        )
    )
    print(f"stop it with: recd cluster down --dir {args.dir}")
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from server.cluster.local import cluster_down

    root = Path(args.dir)
    if not (root / "cluster.json").exists():
        print(f"no cluster state in {root}")
        return 0
    pids = cluster_down(root)
    print(f"stopped {len(pids)} processes")
    return 0
