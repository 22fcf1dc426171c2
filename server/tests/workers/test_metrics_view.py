"""The group's one metrics page: every worker's series with worker="<index>", served by the supervisor,
parseable by Prometheus, without the pages of workers that do not answer."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from server.cluster.local import free_port
from server.workers.metrics_view import GroupMetrics


def worker_page(index: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("recd_calls", "calls", ["method"], registry=registry).labels("Recommend").inc(10 + index)
    Gauge("recd_items", "items", registry=registry).set(100)
    Histogram("recd_latency_seconds", "latency", registry=registry, buckets=(0.1, 1.0)).observe(0.5)
    return registry


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_workers_series_is_labelled_with_its_index_and_dead_workers_are_left_out() -> None:
    servers = []
    targets = {}
    for index in range(2):
        server, thread = start_http_server(0, addr="127.0.0.1", registry=worker_page(index))
        servers.append((server, thread))
        targets[index] = f"127.0.0.1:{server.server_address[1]}"
    targets[2] = f"127.0.0.1:{free_port()}"  # nothing listens: a worker restarting
    view = GroupMetrics(f"127.0.0.1:{free_port()}", lambda: targets)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{view.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        view.close()
        for server, thread in servers:
            server.shutdown()
            thread.join(5)
    page = samples(text)
    for index in range(2):
        w = ("worker", str(index))
        assert page[("recd_calls_total", (("method", "Recommend"), w))] == 10 + index
        assert page[("recd_items", (w,))] == 100
        assert page[("recd_latency_seconds_bucket", (("le", "1.0"), w))] == 1
        assert page[("recd_latency_seconds_count", (w,))] == 1
    assert not [key for key in page if ("worker", "2") in key[1]]
    assert page[("recd_worker_scrape_errors_total", ())] >= 1
    assert ("recd_workers_serving", ()) in page
    # One family per name, as Prometheus requires of a page.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))


def test_shard_node_pages_are_labelled_with_their_node_id() -> None:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=worker_page(7))
    worker, _ = start_http_server(0, addr="127.0.0.1", registry=worker_page(0))
    nodes = {0: f"127.0.0.1:{server.server_address[1]}", 1: f"127.0.0.1:{free_port()}"}  # 1: restarting
    view = GroupMetrics(
        f"127.0.0.1:{free_port()}", lambda: {0: f"127.0.0.1:{worker.server_address[1]}"}, lambda: nodes
    )
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{view.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        view.close()
        for s in (server, worker):
            s.shutdown()
        thread.join(5)
    page = samples(text)
    assert page[("recd_calls_total", (("method", "Recommend"), ("shard_node", "0")))] == 17
    assert page[("recd_calls_total", (("method", "Recommend"), ("worker", "0")))] == 10
    assert not [key for key in page if ("shard_node", "1") in key[1]]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
