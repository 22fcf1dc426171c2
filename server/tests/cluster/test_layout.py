"""Placement of shards on nodes, the layout document, and what a change of nodes or shard count moves."""

from __future__ import annotations

import numpy as np
import pytest

from server.cluster.layout import Layout, Placement, layout_from_config, node_name, parse_nodes
from server.config import ConfigError
from server.tests.conftest import make_config
from server.tools.cluster.rebalance import make_plan, sample_ids

NODES = tuple(node_name(i) for i in range(4))


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["127.0.0.1:1", "127.0.0.1:2"], {"node-0": "127.0.0.1:1", "node-1": "127.0.0.1:2"}),
        (["3=shard-3.svc:50061", "0=10.0.0.1:5"], {"node-3": "shard-3.svc:50061", "node-0": "10.0.0.1:5"}),
    ],
)
def test_parse_nodes(entries: list[str], expected: dict[str, str]) -> None:
    assert parse_nodes(entries) == expected


@pytest.mark.parametrize("entries", [["no-port"], ["x=h:1"], ["1=h:1", "1=h:2"], ["h:"]])
def test_parse_nodes_rejects(entries: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_nodes(entries)


@pytest.mark.parametrize(
    ("nodes", "replication", "copies"), [(1, 2, 1), (2, 2, 2), (4, 2, 2), (4, 3, 3), (3, 5, 3)]
)
def test_each_shard_has_distinct_replicas(nodes: int, replication: int, copies: int) -> None:
    placement = Placement(20, NODES[:nodes] if nodes <= 4 else NODES, replication, 64)
    assert placement.copies == copies
    for replicas in placement.replicas:
        assert len(replicas) == copies == len(set(replicas))
    assert sum(len(placement.shards_of(n)) for n in placement.nodes) == 20 * copies


def test_placement_ignores_listing_order() -> None:
    a = Placement(20, NODES, 2, 64)
    b = Placement(20, tuple(reversed(NODES)), 2, 64)
    assert a == b and a.replicas == b.replicas


def test_default_replication_is_two_with_two_nodes_or_more() -> None:
    config = make_config()
    config.cluster.nodes = ["127.0.0.1:1"]
    assert layout_from_config(config).current.copies == 1
    config.cluster.nodes = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    layout = layout_from_config(config)
    assert (layout.epoch, layout.current.replication, layout.phase) == (1, 2, "stable")


def test_growing_20_to_22_shards_moves_at_most_1_2_times_the_ideal() -> None:
    ids = sample_ids(50_000)
    a, b = Placement(20, NODES, 2, 1024), Placement(22, NODES, 2, 1024)
    plan = make_plan(a, b, ids, "sample")
    assert plan.ideal_fraction == pytest.approx(2 / 22)
    assert plan.moved_fraction <= 1.2 * 2 / 22
    # Consistent hashing: an item either stays or goes to one of the new shards.
    owners_a, owners_b = a.item_ring.owner(ids), b.item_ring.owner(ids)
    moved = owners_a != owners_b
    assert set(np.unique(owners_b[moved]).tolist()) <= {20, 21}
    assert plan.items_moved == int(moved.sum())
    # Existing shards keep their replicas; only the new ones are placed.
    assert [m.shard for m in plan.shard_moves] == [20, 21]


def test_adding_a_node_moves_only_the_shards_it_takes() -> None:
    before = Placement(20, NODES[:3], 2, 1024)
    after = Placement(20, NODES, 2, 1024)
    plan = make_plan(before, after, sample_ids(1000), "sample")
    new = "node-3"
    assert plan.items_moved == 0  # the item ring did not change
    assert {m.shard for m in plan.shard_moves} == set(after.shards_of(new))
    for m in plan.shard_moves:
        assert m.gained == [new] and len(m.lost) == 1 and m.lost[0] in before.nodes
    unchanged = set(range(20)) - set(after.shards_of(new))
    assert all(set(before.replicas[s]) == set(after.replicas[s]) for s in unchanged)


def test_removing_a_node_moves_only_its_shards() -> None:
    before = Placement(20, NODES, 2, 1024)
    after = Placement(20, NODES[:3], 2, 1024)
    plan = make_plan(before, after, [], "none")
    assert {m.shard for m in plan.shard_moves} == set(before.shards_of("node-3"))
    assert all(m.lost == ["node-3"] and len(m.gained) == 1 for m in plan.shard_moves)


def test_layout_phases_route_reads_and_writes() -> None:
    addresses = {n: f"127.0.0.1:{i + 1}" for i, n in enumerate(NODES)}
    stable = Layout(5, Placement(20, NODES, 2, 64), addresses)
    target = Placement(22, NODES, 2, 64)
    dual = stable.begin(target, {})
    switched = dual.switch()
    final = switched.finish()
    assert [x.epoch for x in (dual, switched, final)] == [6, 7, 8]
    assert dual.read == stable.current and dual.writes == (stable.current, target)
    assert switched.read == target and switched.writes == (stable.current, target)
    assert final.read == target and final.writes == (target,) and final.phase == "stable"
    node = target.replicas[21][0]
    assert 21 in dual.hosted(node) and 21 not in stable.hosted(node)
    assert dual.receiving(node) == target.shards_of(node) and final.receiving(node) == []
    for layout in (stable, dual, switched, final):
        assert Layout.from_json(layout.to_json()) == layout
    with pytest.raises(ValueError):
        dual.begin(target, {})


def test_a_layout_needs_an_address_per_node() -> None:
    with pytest.raises(ValueError, match="no address"):
        Layout(1, Placement(20, NODES, 2, 64), {"node-0": "h:1"})
