"""Placement of logical shards on shard nodes, and the versioned layout document nodes and frontends share.

Two consistent-hash rings: items -> logical shards (`shards.count` members, as in embedded mode), and
logical shards -> nodes (node names as members; the first R distinct nodes clockwise of a shard's name
hold its replicas, the first being its preferred reader). Both depend only on names, so every process
computes the same placement from the same few numbers, and growing either ring moves only what the new
members take.

A `Layout` is a placement plus an epoch. While the cluster moves from one placement to another it holds
both: `dual` (writes go to both, reads to the old one, while the data is copied), `switched` (reads move
to the new one, writes still go to both so nothing is lost if a reader lags), then a `stable` layout of
the new placement alone. Shard nodes keep the latest layout they were given; frontends adopt the highest
epoch they see, and nodes refuse writes routed by another epoch (shards/service.py).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from server import _core
from server.config import Config, ConfigError

NODE_VNODES = 1024
PHASES = ("stable", "dual", "switched")
Phase = Literal["stable", "dual", "switched"]


def shard_names(count: int) -> list[str]:
    return [f"shard-{i:03d}" for i in range(count)]


def node_name(node_id: int) -> str:
    return f"node-{node_id}"


def node_id_of(name: str) -> int:
    match = re.fullmatch(r"node-(\d+)", name)
    if match is None:
        raise ValueError(f"node names look like node-<id>, got {name!r}")
    return int(match.group(1))


def parse_nodes(entries: Iterable[str]) -> dict[str, str]:
    """`cluster.nodes` entries to {node name: address}: "host:port" (the node id is its position in the
    list) or "<id>=host:port" (explicit, so removing an entry does not renumber the others)."""
    out: dict[str, str] = {}
    for i, entry in enumerate(entries):
        ident, sep, address = entry.partition("=")
        if not sep:
            ident, address = str(i), entry
        if not ident.strip().isdigit():
            raise ConfigError(f"cluster.nodes[{i}]: expected 'host:port' or '<id>=host:port', got {entry!r}")
        host, colon, port = address.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"cluster.nodes[{i}]: {address!r} is not host:port")
        name = node_name(int(ident))
        if name in out:
            raise ConfigError(f"cluster.nodes[{i}]: node id {ident} is listed twice")
        out[name] = address.strip()
    return out


@dataclass(frozen=True)
class Placement:
    """Where each logical shard lives. `replicas[s]`: its nodes in ring order."""

    shard_count: int
    nodes: tuple[str, ...]
    replication: int
    vnodes: int  # points per shard on the item ring
    node_vnodes: int = NODE_VNODES

    def __post_init__(self) -> None:
        if self.shard_count < 1:
            raise ValueError(f"shard_count must be >= 1, got {self.shard_count}")
        if not self.nodes:
            raise ValueError("a placement needs at least one node")
        if self.replication < 1:
            raise ValueError(f"replication must be >= 1, got {self.replication}")
        # Sorted, so the document and every comparison are independent of listing order.
        object.__setattr__(self, "nodes", tuple(sorted(set(self.nodes), key=_node_order)))

    @property
    def copies(self) -> int:
        """Replicas per shard: the replication factor, capped by the number of nodes."""
        return min(self.replication, len(self.nodes))

    @functools.cached_property
    def item_ring(self) -> _core.HashRing:
        return _core.HashRing(shard_names(self.shard_count), self.vnodes)

    @functools.cached_property
    def node_ring(self) -> _core.HashRing:
        return _core.HashRing(list(self.nodes), self.node_vnodes)

    @functools.cached_property
    def replicas(self) -> tuple[tuple[str, ...], ...]:
        owners = self.node_ring.owners(shard_names(self.shard_count), self.copies)
        members = self.node_ring.members
        return tuple(tuple(members[i] for i in row) for row in owners.tolist())

    def shards_of(self, node: str) -> list[int]:
        return [s for s, replicas in enumerate(self.replicas) if node in replicas]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard_count": self.shard_count,
            "nodes": list(self.nodes),
            "replication": self.replication,
            "vnodes": self.vnodes,
            "node_vnodes": self.node_vnodes,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Placement:
        return cls(
            int(raw["shard_count"]),
            tuple(str(n) for n in raw["nodes"]),
            int(raw["replication"]),
            int(raw["vnodes"]),
            int(raw.get("node_vnodes", NODE_VNODES)),
        )


def _node_order(name: str) -> tuple[int, str]:
    try:
        return (node_id_of(name), name)
    except ValueError:
        return (1 << 62, name)


@dataclass(frozen=True)
class Layout:
    epoch: int
    current: Placement
    addresses: Mapping[str, str] = field(default_factory=dict)
    target: Placement | None = None
    phase: Phase = "stable"

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if (self.target is None) != (self.phase == "stable"):
            raise ValueError("a layout has a target placement exactly while it is not stable")
        missing = [n for n in self.all_nodes if n not in self.addresses]
        if missing:
            raise ValueError(f"no address for nodes {missing}")

    # --- routing --------------------------------------------------------------------------------------
    @property
    def read(self) -> Placement:
        return self.target if self.phase == "switched" and self.target is not None else self.current

    @property
    def writes(self) -> tuple[Placement, ...]:
        return (self.current,) if self.target is None else (self.current, self.target)

    @property
    def all_nodes(self) -> list[str]:
        names = set(self.current.nodes) | (set(self.target.nodes) if self.target else set())
        return sorted(names, key=_node_order)

    def hosted(self, node: str) -> list[int]:
        """Shards `node` must hold: those of every placement in play."""
        shards = set(self.current.shards_of(node))
        if self.target is not None:
            shards |= set(self.target.shards_of(node))
        return sorted(shards)

    def receiving(self, node: str) -> list[int]:
        """Shards of `node` that take rebalancing copies (live writes must win over them)."""
        return self.target.shards_of(node) if self.target is not None else []

    # --- transitions (each a new epoch) ---------------------------------------------------------------
    def begin(self, target: Placement, addresses: Mapping[str, str]) -> Layout:
        if self.phase != "stable":
            raise ValueError(f"a rebalance is already under way (phase {self.phase}); finish or roll back")
        return Layout(self.epoch + 1, self.current, {**self.addresses, **addresses}, target, "dual")

    def switch(self) -> Layout:
        if self.phase != "dual" or self.target is None:
            raise ValueError(f"switch needs phase dual, not {self.phase}")
        return Layout(self.epoch + 1, self.current, self.addresses, self.target, "switched")

    def finish(self) -> Layout:
        if self.target is None:
            raise ValueError("nothing to finish: the layout is stable")
        return Layout(self.epoch + 1, self.target, self._addresses_of(self.target.nodes))

    def rollback(self) -> Layout:
        return Layout(self.epoch + 1, self.current, self._addresses_of(self.current.nodes))

    def _addresses_of(self, nodes: Iterable[str]) -> dict[str, str]:
        return {n: self.addresses[n] for n in nodes}

    # --- the document ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "epoch": self.epoch,
            "phase": self.phase,
            "current": self.current.to_dict(),
            "target": self.target.to_dict() if self.target is not None else None,
            "addresses": dict(sorted(self.addresses.items())),
        }
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        try:
            raw = json.loads(text)
            target = raw.get("target")
            return cls(
                int(raw["epoch"]),
                Placement.from_dict(raw["current"]),
                {str(k): str(v) for k, v in raw["addresses"].items()},
                Placement.from_dict(target) if target else None,
                raw.get("phase", "stable"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a valid layout document: {exc}") from exc


def default_replication(config: Config, nodes: int) -> int:
    """`cluster.replication`, or 2 when there are two nodes or more (one node lost costs nothing)."""
    if config.cluster.replication > 0:
        return config.cluster.replication
    return 2 if nodes >= 2 else 1


def layout_from_config(config: Config) -> Layout:
    """Epoch 1: the layout a fresh cluster starts with. Epoch 0 means "no layout" on the wire."""
    addresses = parse_nodes(config.cluster.nodes)
    if not addresses:
        raise ConfigError("cluster.nodes is empty: list the shard nodes (or run embedded)")
    placement = Placement(
        config.shards.count,
        tuple(addresses),
        default_replication(config, len(addresses)),
        config.shards.vnodes,
    )
    return Layout(1, placement, addresses)
