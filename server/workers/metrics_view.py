"""The group's one /metrics page: every worker's page, each sample labelled worker="<index>", every shard
node's page (the shards' own metrics, shards/metrics.py), each labelled shard_node="<id>", and the
supervisor's own series (restarts, workers serving), on `server.metrics_address`.

Each worker serves its page on a private loopback port of its own; a scrape of the supervisor fetches
them all at that moment (in parallel, a few seconds at most) and merges them family by family, so
Prometheus scrapes one target per group and sums the `worker` label away where it wants the group's
total. A worker that does not answer is left out of that scrape and counted in
recd_worker_scrape_errors_total. The label is the worker's index, not its pid: a restarted worker
continues the same series, whose counters restart from zero, which rate() reads as a counter reset.

Chosen over prometheus_client's multiprocess mode, which needs a shared directory of mmapped files, a
multiprocess_mode for every gauge and gives up the process and GC metrics of each worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from server import metrics

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"
NODE_LABEL = "shard_node"  # the group's shard nodes (server/workers/shard_node.py), by node id


def fetch_page(address: str, timeout_s: float) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def merge_pages(pages: Mapping[int, str], node_pages: Mapping[int, str] | None = None) -> list[Metric]:
    """One family per name, holding every page's samples with the page's worker index as a label (and
    each shard node's with its node id as `shard_node`)."""
    families: dict[str, Metric] = {}
    labelled = [(WORKER_LABEL, i, t) for i, t in sorted(pages.items())]
    labelled += [(NODE_LABEL, i, t) for i, t in sorted((node_pages or {}).items())]
    for label, index, text in labelled:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, label: str(index)}))
    return list(families.values())


class WorkerPages(Collector):
    """Collects the workers' pages and the shard nodes'; `targets` and `node_targets` say where they are
    now (index or node id -> host:port)."""

    def __init__(
        self,
        targets: Callable[[], Mapping[int, str]],
        timeout_s: float = 3.0,
        node_targets: Callable[[], Mapping[int, str]] | None = None,
    ) -> None:
        self._targets = targets
        self._node_targets = node_targets or dict
        self._timeout_s = timeout_s
        self._pool = cf.ThreadPoolExecutor(8, "worker-metrics")

    def collect(self) -> Iterator[Metric]:
        workers, nodes = dict(self._targets()), dict(self._node_targets())
        addresses = [*workers.values(), *nodes.values()]
        texts = list(self._pool.map(lambda a: fetch_page(a, self._timeout_s), addresses))
        keys = [(False, i) for i in workers] + [(True, i) for i in nodes]
        pages: dict[int, str] = {}
        node_pages: dict[int, str] = {}
        for (is_node, index), text in zip(keys, texts, strict=True):
            if text is None:
                metrics.WORKER_SCRAPE_ERRORS.inc()
            else:
                (node_pages if is_node else pages)[index] = text
        yield from merge_pages(pages, node_pages)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class GroupMetrics:
    """Serves the merged page on `address` (host:port) from a thread, until `close()`."""

    def __init__(
        self,
        address: str,
        targets: Callable[[], Mapping[int, str]],
        node_targets: Callable[[], Mapping[int, str]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._pages = WorkerPages(targets, node_targets=node_targets)
        self.registry.register(self._pages)
        for own in (metrics.WORKER_RESTARTS, metrics.WORKERS_SERVING, metrics.WORKER_SCRAPE_ERRORS):
            self.registry.register(own)
        host, _, port = address.rpartition(":")
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._pages.close()
