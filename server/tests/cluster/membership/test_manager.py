"""The frontend follows the layout store: a polled store (ScyllaDB) is read every probe round; with the
embedded store, a node reporting a newer epoch makes the frontend read the nodes' layouts."""

from __future__ import annotations

from server.cluster.layout import Layout, Placement
from server.cluster.layout_store.pushed import PushedLayoutStore
from server.cluster.membership.manager import ClusterManager
from server.tests.cluster.stores import NODES, InProcessNodes, MemoryLayoutStore, first_layout
from server.tests.conftest import make_config
from server.tests.routing.fakes import DIM, FakeNode


def fakes_for(layout: Layout) -> dict[str, FakeNode]:
    return {n: FakeNode(n, layout.hosted(n)) for n in layout.all_nodes}


async def no_dns(host: str, port: int) -> list[str]:
    return [host]


def grown(layout: Layout) -> Layout:
    return layout.begin(Placement(22, layout.current.nodes, 2, 64), {})


async def test_a_polled_store_is_followed_every_probe_round() -> None:
    layout = first_layout()
    fakes = fakes_for(layout)
    by_address = {layout.addresses[n]: f for n, f in fakes.items()}
    store = MemoryLayoutStore(layout)
    config = make_config(dim=DIM)
    manager = ClusterManager(config, layout=layout, make_client=by_address.__getitem__, store=store)
    router = manager.router
    try:
        await router.ensure_started()
        assert (router.epoch, router.shard_count) == (1, 20)
        dual = grown(layout)
        await store.compare_and_set(1, dual)
        await manager.probe_all()  # no node reports epoch 2 (fakes follow none): the store is read
        assert router.epoch == 2 and len(router.topology.writes) == 2
        await store.compare_and_set(2, dual.switch())
        await manager.probe_all()
        assert (router.epoch, router.shard_count) == (3, 22)  # reads follow the target placement
    finally:
        await router.close()


async def test_with_the_embedded_store_a_newer_node_epoch_is_followed() -> None:
    layout = first_layout()
    nodes = await InProcessNodes.start(layout)
    addresses = {n: c.address for n, c in nodes.clients.items()}  # type: ignore[attr-defined]
    routed = Layout(1, layout.current, addresses)
    config = make_config(dim=DIM)
    manager = ClusterManager(config, layout=routed, resolver=no_dns)
    router = manager.router
    try:
        await router.ensure_started()
        dual = grown(routed)
        await PushedLayoutStore(lambda: nodes.clients).compare_and_set(1, dual)  # what a rebalance does
        await manager.probe_all()
        assert router.epoch == 2 and set(router.node_names) == set(NODES)
    finally:
        await router.close()
        await nodes.stop()
