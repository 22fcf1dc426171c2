"""Effective configuration: built-in defaults, then a YAML file (--config), then RECD_* variables.

Environment variables name a key path with double underscores: RECD_SHARDS__COUNT=22 sets shards.count,
RECD_DIM=128 sets dim. RECD_* names without "__" that are no top-level key (RECD_PYTHON, RECD_STACK_DIR)
belong to the scripts and are not config. Values are parsed as YAML scalars, so "true", "0.5" and
"[a, b]" work.
Unknown keys and wrongly typed values are errors that name the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class TlsConfig:
    """TLS of one gRPC listener (server/security/tls.py). Off: plaintext, which is only started on a
    loopback address or a unix socket unless allow_plaintext says otherwise."""

    enabled: bool = False
    # PEM files; re-read when they change on disk (rotation without a restart: new connections get the
    # new certificate, open ones keep theirs).
    cert_file: str = ""
    key_file: str = ""
    # CA bundle (PEM) that client certificates are verified against; with require_client_cert false,
    # clients are not asked for a certificate at all.
    client_ca_file: str = ""
    require_client_cert: bool = False
    # Plaintext on an address other than loopback, for a network where something else encrypts the
    # traffic (a service mesh's sidecars): refused unless set.
    allow_plaintext: bool = False

    def problems(self, where: str) -> list[str]:
        found = []
        if self.enabled and not (self.cert_file and self.key_file):
            found.append(f"{where}.enabled needs {where}.cert_file and {where}.key_file")
        if self.require_client_cert and not (self.enabled and self.client_ca_file):
            found.append(f"{where}.require_client_cert needs {where}.enabled and {where}.client_ca_file")
        return found


@dataclass
class ClientTlsConfig:
    """TLS of recd's own connections to a server: a gRPC channel, Redis, the CQL or the Bolt driver."""

    enabled: bool = False
    # CA bundle (PEM) the server's certificate is verified against; empty: the system's roots.
    ca_file: str = ""
    # This client's certificate and key (PEM), for servers that require one (mutual TLS).
    cert_file: str = ""
    key_file: str = ""
    # The name the server's certificate is checked against, instead of the host dialled: needed where
    # recd dials addresses it resolved itself (pod IPs behind a headless Service).
    server_name: str = ""

    def problems(self, where: str) -> list[str]:
        if bool(self.cert_file) != bool(self.key_file):
            return [f"{where}.cert_file and {where}.key_file go together (a client certificate and its key)"]
        if (self.cert_file or self.ca_file or self.server_name) and not self.enabled:
            return [f"{where} names certificate files or a server_name but {where}.enabled is false"]
        return []


@dataclass
class LimitsConfig:
    """Input limits of the public API (server/validation.py), checked before any work starts; a request
    past one is INVALID_ARGUMENT naming the field and the limit."""

    # Metadata (headers) one call may carry, in bytes: gRPC refuses more with RESOURCE_EXHAUSTED.
    max_metadata_bytes: int = 16 * 1024
    # Attributes of one item or one user, and the bytes of one attribute name and one value.
    max_attributes_per_item: int = 64
    max_attributes_per_user: int = 64
    max_attribute_name_bytes: int = 128
    max_attribute_value_bytes: int = 1024
    # Distinct attribute names the whole catalogue holds: every frontend and shard keeps a code column
    # per name, 4 bytes per catalogue row each, so names must be a small vocabulary (lang, category).
    max_attribute_names: int = 256
    # Recommend / SimilarItems: filter attributes, allowed values per attribute, context entries
    # (their keys and values are bounded like attribute names and values), excluded ids.
    max_filter_attributes: int = 32
    max_filter_values: int = 1000
    max_context_entries: int = 64
    max_exclude_ids: int = 10_000

    def problems(self, where: str) -> list[str]:
        return [
            f"{where}.{name} must be >= 1, got {value}"
            for name, value in vars(self).items()
            if not isinstance(value, int) or value < 1
        ]


@dataclass
class ServerConfig:
    address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9464"
    # Beyond this many RPCs in flight, callers get RESOURCE_EXHAUSTED instead of queueing unboundedly.
    max_concurrent_rpcs: int = 512
    grace_s: float = 5.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Largest batch one write RPC (UpsertItems, RecordInteractions, ...) may carry.
    max_batch: int = 10_000
    max_id_bytes: int = 256
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # uvloop cuts the event loop's own cost per RPC; "auto" uses it when it is installed.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    # The public API's listener (every worker of a group, and each worker's private address).
    tls: TlsConfig = field(default_factory=TlsConfig)
    # How recd's own tools (the CLI, the loader, benchmarks, a group's supervisor) call the public API.
    client_tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass
class IndexConfig:
    m: int = 16
    ef_construction: int = 200
    # The shards' search beam (hnswlib ef; each shard raises it to at least what it is asked to return).
    # Chosen with pipeline.candidates.shard_k by the sweep of `recd bench ann`: see shard_k there.
    ef_search: int = 16
    initial_capacity: int = 16_384


@dataclass
class MicroBatchConfig:
    max_batch: int = 64
    max_wait_ms: float = 0.3


@dataclass
class FeedConfig:
    """The shards' change feed (shards/changes.py) and the frontends following it (catalog/feed.py)."""

    # Bytes of changes a shard keeps in memory for followers; older positions come from the WAL, or a
    # reset to a scan.
    retain_bytes: int = 4 << 20
    # A frontend serves once every shard's first sync is done, or after this long (the rest follow).
    start_timeout_s: float = 120.0
    # Pause before a follower tries the next replica after a failure.
    retry_ms: float = 200.0


@dataclass
class ShardsConfig:
    count: int = 20
    vnodes: int = 1024
    index: IndexConfig = field(default_factory=IndexConfig)
    snapshot_every_records: int = 50_000
    group_commit_window_ms: float = 2.0
    feed: FeedConfig = field(default_factory=FeedConfig)


@dataclass
class StepConfig:
    budget_ms: float = 10.0
    # fail_open: a failure or overrun degrades the answer; fail closed: it fails the request.
    fail_open: bool = True


def _default_steps() -> dict[str, StepConfig]:
    return {
        "hydrate_user": StepConfig(budget_ms=15.0, fail_open=True),
        "hydrate_item": StepConfig(budget_ms=5.0, fail_open=False),
        "candidates": StepConfig(budget_ms=50.0, fail_open=False),
        "ann": StepConfig(budget_ms=40.0, fail_open=True),
        "graph": StepConfig(budget_ms=25.0, fail_open=True),
        "popular": StepConfig(budget_ms=5.0, fail_open=True),
        "filter": StepConfig(budget_ms=5.0, fail_open=False),
        "rank": StepConfig(budget_ms=25.0, fail_open=True),
        "select": StepConfig(budget_ms=5.0, fail_open=False),
    }


@dataclass
class CandidatesConfig:
    # ANN candidates per request before filtering; per-shard k is derived from it. `recd eval` on the
    # demo data: NDCG@10 0.0813 / 0.0810 / 0.0808 at 200 / 100 / 50 (within the mean's standard error,
    # <= 0.0024), while 100 halves what each shard fetches for a user with a seen set (ef 40 -> 20).
    ann_k: int = 100
    # Hits asked of each shard for an unfiltered query of merged top-k (ShardRouter.per_shard_k):
    #   per-shard k = min(k, max(shard_k, ceil(k * shard_k_factor / shards.count)))
    # The true top-k is spread evenly over the shards (hashing), so each needs its share with slack,
    # not all k: shard_k covers a small k (a top-10 over 20 shards), the factor term takes over for a
    # larger k (ann_k 200 over 20 shards: 20 per shard). Exclusions (the seen set) and filters are
    # over-fetched by each shard itself, on top of this.
    # shard_k and shards.index.ef_search are what `recd bench ann` picks: the least CPU per query with
    # recall@10 >= 0.97 against exact search (BENCHMARKS.md, "Sharded ANN": 4 and 16, recall@10 0.970
    # at half the CPU of the former 10 and 50, 0.995). recall@10 holds for any k, as per-shard k and
    # ef only grow with it; the recall of the whole top-k of a large k does not (ann_k 200: recall@200
    # 0.92 at ef 20 vs 0.97 at ef 50). A factor of 2 also cuts short the shards that hold more than
    # their share of a k of about 30-80: 1-3% of recall@k (k=50 at ef 50: 0.97 with 5 per shard, 0.99
    # with 10); a factor of 3 makes that < 0.3% but makes ann_k 200 search 30 per shard (ef >= 30).
    shard_k: int = 4
    shard_k_factor: float = 2.0
    graph_seeds: int = 5
    graph_hops: int = 2
    graph_limit_per_hop: int = 10
    graph_min_score: float = 0.05
    popular_k: int = 200
    # For a user with a vector, popular items are a floor ("fallback": only when ANN and graph left fewer
    # than k candidates, e.g. a source failed) or candidates like the others ("always": globally popular
    # items can then outrank personalised ones whenever the model weighs popularity heavily).
    popular_for_warm_users: Literal["fallback", "always"] = "fallback"
    # A filter whose estimated match count (from the catalogue's per-value counts) is at most this is
    # answered by scoring every matching item exactly instead of a filtered HNSW search (0: never).
    # `recd bench filters` (200k x 64, CPU per Recommend): 20k matching, exact 1.9 ms vs filtered HNSW
    # 9.0; 100k matching, 3.9 vs 5.1. Exact grows with the matches (on the frontend), filtered HNSW
    # shrinks as the filter widens: 50k keeps a margin below where they meet.
    exact_filter_max_items: int = 50_000
    history_limit: int = 50
    # Half-life of an interaction's weight in the user vector.
    history_half_life_s: float = 7 * 24 * 3600.0


@dataclass
class RequestBatchConfig:
    # Concurrent requests are gathered into one batch that runs the pipeline once: at most max_batch,
    # waiting at most max_wait_ms while every batch slot is busy (never when one is free: an idle server
    # answers at once), with at most in_flight batches running at a time.
    max_batch: int = 32
    max_wait_ms: float = 2.0
    # One batch at a time made the largest batches and the least CPU per request (`recd bench
    # recommend`: 1.90 vs 2.36 ms with 2 in flight on the 2-core box); the event loop still serves
    # gRPC I/O while the batch's shard searches run on their threads.
    in_flight: int = 1


@dataclass
class PipelineConfig:
    budget_ms: float = 80.0
    # Steps that wait on I/O stop this long before the deadline, so the compute steps after them (a
    # millisecond or less) still answer in time with what was found.
    compute_reserve_ms: float = 3.0
    steps: dict[str, StepConfig] = field(default_factory=_default_steps)
    # Each pipeline's steps in order (each one's budget and policy is in `steps`; their stage types must
    # chain from the batch to the selected items, checked at start) and the candidate sources its
    # "candidates" step runs concurrently.
    recommend_steps: list[str] = field(
        default_factory=lambda: ["hydrate_user", "candidates", "filter", "rank", "select"]
    )
    recommend_sources: list[str] = field(default_factory=lambda: ["ann", "graph", "popular"])
    similar_steps: list[str] = field(
        default_factory=lambda: ["hydrate_item", "candidates", "filter", "rank", "select"]
    )
    similar_sources: list[str] = field(default_factory=lambda: ["ann", "graph"])
    batch: RequestBatchConfig = field(default_factory=RequestBatchConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    # Ranked candidates MMR chooses from when diversity is asked for (at least 2k): diversity needs
    # candidates from beyond the closest neighbourhood, so the pool is wider than k.
    mmr_pool: int = 500


@dataclass
class RankingConfig:
    ranker: Literal["auto", "gpu", "cpu"] = "auto"
    # None: the model file shipped in server/ranking/default_model.yaml. Its version is the default one.
    model_file: str | None = None
    # More model files, loaded beside it (several versions at once; a request may name one).
    extra_model_files: list[str] = field(default_factory=list)
    # Seconds between looks at the model files (mtime and size, then a hash): a changed file is loaded
    # without a restart, a broken one refused (the old version keeps serving). 0: never look.
    reload_interval_s: float = 5.0

    def problems(self) -> list[str]:
        if not self.reload_interval_s >= 0:
            return [f"ranking.reload_interval_s must be >= 0 (0: no watching), got {self.reload_interval_s}"]
        return []


@dataclass
class ProfilesConfig:
    backend: Literal["embedded", "scylla"] = "embedded"
    history_limit: int = 500
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    port: int = 9042
    keyspace: str = "recd"
    local_dc: str | None = None
    consistency: str = "LOCAL_QUORUM"
    replication: dict[str, Any] = field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1}
    )
    request_timeout_ms: float = 20.0
    # Writes (RecordInteractions, loads) are not on the request path's budget, so they get longer.
    write_timeout_ms: float = 2000.0
    # A read not answered after this long is also sent to the next replica (idempotent reads only).
    speculative_delay_ms: float = 5.0
    speculative_attempts: int = 1
    connect_timeout_s: float = 5.0
    # CQL native protocol: ScyllaDB speaks v4, Cassandra 5 v4 and v5; fixed, it spares a negotiation.
    protocol_version: int = 4
    # Ceiling of the driver's exponential reconnection delay once a node is down.
    reconnect_max_s: float = 5.0
    # Statements one write call keeps in flight at once (concurrent single-partition writes).
    write_concurrency: int = 64
    # default_time_to_live of user_interactions (TWCS then drops whole expired SSTables); 0 keeps all.
    interactions_ttl_s: int = 0
    # Items kept in each user's seen set (what Recommend leaves out unless include_seen); beyond it the
    # least recently seen are evicted. Far above history_limit: seen is every item, not a recent window.
    seen_limit: int = 10_000
    # TLS to the CQL nodes (cassandra-driver's ssl_context); server_name: the name their certificate
    # carries when hosts are IP addresses.
    tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)


@dataclass
class GraphConfig:
    backend: Literal["embedded", "neo4j"] = "embedded"
    uri: str = "bolt://127.0.0.1:7687"
    user: str = "neo4j"
    password: str = ""
    database: str = "neo4j"
    # Node label of items: a second label gives a second, independent graph in one database (tests).
    item_label: str = "Item"
    connect_timeout_s: float = 2.0
    # Ceiling of a neighbour query's time, whatever the caller's budget.
    query_timeout_ms: float = 100.0
    write_timeout_s: float = 60.0
    # Edges per UNWIND write transaction.
    write_batch: int = 5000
    max_connections: int = 32
    # Concurrent neighbour queries that arrive together are sent as one UNWIND query.
    neighbour_batch: MicroBatchConfig = field(default_factory=MicroBatchConfig)
    # Per-item neighbour lists of a remote graph are cached this long (0 = no cache).
    neighbour_cache_ttl_s: float = 300.0
    # TLS to Neo4j (the Bolt driver's ssl_context; the uri stays bolt:// or neo4j://).
    tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)


@dataclass
class CacheConfig:
    backend: Literal["embedded", "redis"] = "embedded"
    max_bytes: int = 64 * 1024 * 1024
    url: str = "redis://127.0.0.1:6379/0"
    timeout_ms: float = 5.0
    user_vector_ttl_s: float = 300.0
    # Prepended to every key, so several deployments (or tests) can share one Redis.
    key_prefix: str = ""
    # After this many consecutive failures Redis is skipped for breaker_open_s, then probed again.
    breaker_failures: int = 5
    breaker_open_s: float = 1.0
    max_connections: int = 256
    # TLS to Redis (a rediss:// url also turns it on, with the system's roots unless ca_file is set).
    tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)


@dataclass
class ResponseConfig:
    # How long the edge tier may serve a Recommend answer from its cache.
    cache_ttl_seconds: int = 30


@dataclass
class EdgeConfig:
    """`recd edge`: a cache tier in front of one or more frontends (origins), same Recommender API."""

    address: str = "127.0.0.1:50052"
    metrics_address: str = "127.0.0.1:9465"
    # host:port each; a host name stands for every address it resolves to (under Kubernetes the frontends'
    # headless Service: one per ready pod), re-resolved every resolve_interval_s and after an origin
    # answers UNAVAILABLE. A vanished address's calls get origin_drain_s to finish.
    origins: list[str] = field(default_factory=lambda: ["127.0.0.1:50051"])
    resolve_interval_s: float = 5.0
    origin_drain_s: float = 10.0
    # HTTP/2 connections to each origin address, used in turn: a frontend running a worker group
    # (`recd serve --workers N`) spreads connections, not requests, over its workers.
    connections_per_origin: int = 4
    # least_outstanding steers away from a slow origin; round_robin is the simple, even spread.
    balancing: Literal["round_robin", "least_outstanding"] = "least_outstanding"
    # Ceiling of one origin call (a caller's shorter deadline wins); shared fills use the ceiling.
    origin_timeout_ms: float = 1000.0
    # UNAVAILABLE is retried on another origin, up to max_attempts in all, while the retry budget
    # allows: retries in the last retry_budget_window_s <= ratio * requests + min_per_s * window.
    max_attempts: int = 3
    retry_budget_ratio: float = 0.1
    retry_budget_min_per_s: float = 5.0
    retry_budget_window_s: float = 10.0
    # backend "embedded": the in-process LRU (bounded by max_bytes) only; "redis" adds Redis as a second
    # level shared by edge replicas, which fails open (Redis down = L1 only).
    cache: CacheConfig = field(default_factory=lambda: CacheConfig(max_bytes=256 * 1024 * 1024))
    # Part of every key: changing it drops every cached answer at once (a format change, a bad deploy).
    # e2: entries carry the time they were stored (deletes are checked against it).
    key_version: str = "e2"
    # The origin's cache_ttl_seconds is honoured up to this; 0 from the origin means "do not cache".
    max_ttl_s: float = 300.0
    # Degraded answers (a source missing) are kept briefly: long enough to shield a struggling origin
    # from a stampede, short enough that recovery shows quickly.
    degraded_ttl_s: float = 2.0
    # Stale-while-revalidate: an expired entry is still served this long while one refresh runs.
    stale_grace_s: float = 30.0
    # Answers depend on time (freshness, context): keys roll over every bucket, at a per-user phase.
    time_bucket_s: float = 3600.0
    # With Redis, a user's version (bumped by RecordInteractions) is re-read this often, so a bump on
    # another replica is seen within this time.
    user_version_refresh_s: float = 1.0
    # Users whose version the in-process level remembers.
    max_users: int = 500_000
    # Background refreshes in flight at once; past it stale entries are served without one.
    max_refreshes: int = 64
    # Follow an origin's Catalog.WatchDeletes: a cached answer holding an item deleted since it was stored
    # is a miss. delete_margin_s covers the spread of feed lag and clocks between frontends and edges;
    # past max_deleted_ids (ids heard of in the last max_ttl_s + stale_grace_s) older entries are refused.
    watch_deletes: bool = True
    delete_margin_s: float = 5.0
    max_deleted_ids: int = 1_000_000
    # A deletes stream silent this long (frontends send a heartbeat every 5 s) is given up and resumed.
    watch_idle_timeout_s: float = 20.0
    max_concurrent_rpcs: int = 4096
    grace_s: float = 5.0
    # The edge's own listener, and its calls to the origins (the frontends' server.tls).
    tls: TlsConfig = field(default_factory=TlsConfig)
    origin_tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)
    # The edge refuses (INVALID_ARGUMENT) what its frontends would, before it builds a cache key: keep
    # these equal to the frontends' server.limits.
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass
class ClusterConfig:
    """Shard nodes as processes (`recd shard --node-id N`); empty `nodes` = every shard in the frontend."""

    # One entry per node: "host:port" (node id = position in the list) or "<id>=host:port". A host may be
    # a DNS name (e.g. a StatefulSet pod under a headless service): resolved at start and every
    # resolve_interval_s, so a rescheduled pod is followed without a restart.
    nodes: list[str] = field(default_factory=list)
    # Copies of each logical shard on distinct nodes (capped by the node count); 0: 2 with >= 2 nodes.
    replication: int = 0
    # Replicas that must have a write in their WAL before it is acknowledged (0: all of them). 1 keeps
    # writes available while one replica is down; what it misses is replayed to it (hinted handoff,
    # at most hint_max_items held per frontend, tried every hint_replay_interval_ms). See README,
    # "Write availability".
    write_acks: int = 1
    hint_max_items: int = 200_000
    hint_replay_interval_ms: float = 500.0
    # A shard node's /metrics (host:port; `recd shard --metrics-address` wins); empty: none.
    node_metrics_address: str = ""
    # Hedged reads: a second request to the next replica once the first node is late. "p95": later than
    # that node's recent p95 (at least hedge_min_ms); "fixed": after hedge_after_ms; "off": never.
    hedge: Literal["off", "fixed", "p95"] = "p95"
    hedge_after_ms: float = 20.0
    hedge_min_ms: float = 5.0
    # Hedged RPCs as a fraction of Search RPCs at most (a token bucket): a slow cluster is not sent twice
    # the load that makes it slow.
    hedge_budget: float = 0.1
    # A node call gets this fraction of what is left of the caller's deadline (time to merge remains).
    node_deadline_fraction: float = 0.9
    # Consecutive failed calls that open a node's circuit: it is skipped until a background probe (or,
    # after breaker_open_s, a trial call) succeeds.
    breaker_failures: int = 3
    breaker_open_s: float = 1.0
    # Probes (Stats) of every node: health, and the layout epoch nodes follow (rebalancing).
    probe_interval_ms: float = 500.0
    probe_timeout_ms: float = 1000.0
    resolve_interval_s: float = 30.0
    # Ceiling of gRPC's reconnect backoff, so a restarted node is used again within about this long.
    max_reconnect_backoff_ms: int = 1000
    # The shard nodes' listener (the internal Shard API), and how frontends, a node itself and the
    # cluster tools call it.
    tls: TlsConfig = field(default_factory=TlsConfig)
    client_tls: ClientTlsConfig = field(default_factory=ClientTlsConfig)


@dataclass
class WorkersConfig:
    """`recd serve --workers N`: a supervisor, N frontend worker processes on the one public port, the
    shard-node processes it starts when `cluster.nodes` is empty, and a state node that serves the
    embedded profile store, graph and cache to the workers (server/workers)."""

    # Frontend worker processes (`--workers` wins): None = one per core this process may run on; 0 = no
    # group, everything in one process (`--single-process`).
    count: int | None = None
    # Shard-node processes the group starts when cluster.nodes is empty (0: one per worker, at most one
    # per shard). They host one copy of each shard between them, in data_dir/shards as one process would.
    shard_nodes: int = 0
    # The group's private directory (made 0700): the state nodes' sockets and group.json (pids and
    # addresses). None: a fresh temporary directory, removed at stop. Unix socket paths are short
    # (107 bytes): keep it near the root.
    run_dir: str | None = None
    # Set by the supervisor for its workers, not by hand: the state nodes' unix socket, `{role}` standing
    # for profiles, graph or cache (one state node per role). While set, the embedded profile store, graph
    # and cache are reached there instead of being built in-process.
    state_socket: str | None = None
    # Ceiling of a state-node call that carries no deadline of its own (writes and cache calls).
    state_write_timeout_s: float = 30.0
    state_cache_timeout_ms: float = 50.0
    # Children are started (and each restarted after it dies) within this long, or the start fails.
    start_timeout_s: float = 600.0
    # A child that dies is restarted after restart_backoff_s, doubling for each death in a row (one that
    # served for restart_reset_s starts over), at most restart_backoff_max_s.
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    restart_reset_s: float = 60.0
    # After SIGTERM, how long shard nodes and the state node may take to write their snapshots before
    # they are killed (workers get server.grace_s plus a margin).
    stop_timeout_s: float = 120.0

    def problems(self) -> list[str]:
        found = []
        if self.count is not None and self.count < 0:
            found.append(f"workers.count must be >= 0 (0: one process), got {self.count}")
        if self.shard_nodes < 0:
            found.append(f"workers.shard_nodes must be >= 0 (0: one per worker), got {self.shard_nodes}")
        for key in (
            "state_write_timeout_s",
            "state_cache_timeout_ms",
            "start_timeout_s",
            "restart_backoff_s",
            "restart_backoff_max_s",
            "stop_timeout_s",
        ):
            if not getattr(self, key) > 0:
                found.append(f"workers.{key} must be > 0, got {getattr(self, key)}")
        return found


def _default_popularity_lists() -> dict[str, float]:
    return {"trending": 86_400.0, "all_time": 365 * 86_400.0}


@dataclass
class PopularityConfig:
    """Time-decayed interaction counts per item, kept by the profile store (server/popularity.py)."""

    # List name -> half-life in seconds of an interaction's weight in that list's counts.
    lists: dict[str, float] = field(default_factory=_default_popularity_lists)
    # The list the popular candidate source orders by.
    popular_list: str = "all_time"
    # The list the ranking's popularity feature reads.
    feature_list: str = "all_time"
    # A caller-supplied ItemRecord.popularity counts as this many interactions per unit.
    prior_weight: float = 1.0
    # How often a frontend re-reads the shared counts from the profile store.
    refresh_s: float = 5.0

    def problems(self) -> list[str]:
        found = []
        if not self.lists:
            found.append("popularity.lists must name at least one list")
        for name, half_life_s in self.lists.items():
            if not half_life_s > 0:
                found.append(
                    f"popularity.lists.{name} (a half-life in seconds) must be > 0, got {half_life_s}"
                )
        for key in ("popular_list", "feature_list"):
            name = getattr(self, key)
            if name not in self.lists:
                known = ", ".join(sorted(self.lists)) or "none"
                found.append(f"popularity.{key} {name!r} is not one of popularity.lists ({known})")
        if not self.prior_weight >= 0:
            found.append(f"popularity.prior_weight must be >= 0, got {self.prior_weight}")
        if not self.refresh_s > 0:
            found.append(f"popularity.refresh_s must be > 0, got {self.refresh_s}")
        return found


@dataclass
class TracingConfig:
    """OpenTelemetry traces (server/tracing), exported over OTLP/gRPC by every process that serves:
    a frontend (each worker of a group on its own), an edge, a shard node. Off: no tracer exists and
    the request path creates no span objects."""

    enabled: bool = False
    # An OTLP/gRPC receiver: host:port, or http(s)://host:port (an OpenTelemetry Collector, Jaeger, Tempo).
    endpoint: str = "127.0.0.1:4317"
    # Plaintext to the receiver (a collector agent on the same host or pod); false: TLS with system roots.
    insecure: bool = True
    # Share of new traces recorded; a call that arrives with a trace context follows its caller's
    # decision, so one trace is recorded whole or not at all (edge -> frontend -> shard nodes).
    sampling_ratio: float = 0.01
    # "" names each process by its role: recd-frontend, recd-edge, recd-shard.
    service_name: str = ""
    # Spans queue in memory and leave in batches from a background thread; past the queue they are
    # dropped (never blocking a request).
    max_queue_size: int = 8192
    export_interval_ms: float = 1000.0
    export_timeout_s: float = 10.0

    def problems(self) -> list[str]:
        found = []
        if not 0.0 <= self.sampling_ratio <= 1.0:
            found.append(f"tracing.sampling_ratio must be in [0, 1] (0.01 = 1%), got {self.sampling_ratio}")
        if self.enabled and not self.endpoint:
            found.append("tracing.enabled needs tracing.endpoint (host:port of an OTLP/gRPC receiver)")
        if self.max_queue_size < 1 or not self.export_interval_ms > 0 or not self.export_timeout_s > 0:
            found.append(
                "tracing needs max_queue_size >= 1, export_interval_ms > 0 and export_timeout_s > 0, got "
                f"{self.max_queue_size}, {self.export_interval_ms}, {self.export_timeout_s}"
            )
        return found


@dataclass
class VariantConfig:
    """One arm of an experiment."""

    name: str = ""
    # Relative share of the experiment's users (weights need not add up to anything).
    weight: float = 1.0
    # Request-path parameters this variant serves with, by the names in
    # server/experiments/definitions.py OVERRIDES (model_version, ef_search, ann_k, sources, diversity...).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Users always served by this variant while the experiment is enabled, whatever their hash says and
    # even outside the traffic share (QA accounts, the team dogfooding a variant).
    users: list[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    """An A/B test: a user takes part when hash(salt, user) falls inside `traffic`, and is then given a
    variant by a second, independent hash over the variants' weights (server/experiments/assignment.py)."""

    name: str = ""
    # Another salt re-draws every user (a fresh population for the next experiment); "" means the name.
    salt: str = ""
    # Share of all users in the experiment, 0..1. Raising it only adds users: nobody changes variant.
    traffic: float = 1.0
    # The kill switch: false serves everyone, allow-listed users too, as outside the experiment.
    enabled: bool = True
    variants: list[VariantConfig] = field(default_factory=list)


@dataclass
class ExperimentsConfig:
    """Experiments (server/experiments): definitions here and in a watched file, and how their outcomes
    are attributed."""

    definitions: list[ExperimentConfig] = field(default_factory=list)
    # A YAML file holding a list of more definitions (as under `definitions`), re-read when it changes
    # (every `reload_interval_s`; 0: read once, at start), so experiments start, change and are killed
    # without a restart. A
    # changed file that does not load is refused with an ERROR line; the experiments before it go on.
    file: str | None = None
    reload_interval_s: float = 5.0
    # An interaction is attributed to the newest answer that served its item to that user at most this
    # long before it (and not after it).
    attribution_window_s: float = 24 * 3600.0
    # Actions counted per variant by name (click-through is "click" per impression, conversion
    # "purchase" per impression); other actions count as "other", so metric labels stay bounded.
    outcome_actions: list[str] = field(default_factory=lambda: ["click", "purchase"])

    def problems(self) -> list[str]:
        found = []
        if not self.reload_interval_s >= 0:
            found.append(f"experiments.reload_interval_s must be >= 0, got {self.reload_interval_s}")
        if not self.attribution_window_s > 0:
            found.append(f"experiments.attribution_window_s must be > 0, got {self.attribution_window_s}")
        bad = [a for a in self.outcome_actions if not a or len(a) > 64 or a == "other"]
        if bad:
            found.append(f"experiments.outcome_actions: {bad} must be 1..64 characters and not 'other'")
        return found


@dataclass
class ExposuresConfig:
    """The exposure log: answers served, in the profile store so every frontend sees them. Written for
    answers served inside an experiment, and for every answer with write_back."""

    # Log every answer, not only experiments' (impressions for fatigue, as Gorse's write-back).
    write_back: bool = False
    # Items shown to a user this many times within fatigue_window_s without any interaction of theirs
    # count as seen (excluded unless the request sets include_seen). 0: off. Needs write_back.
    fatigue_after: int = 0
    fatigue_window_s: float = 24 * 3600.0
    # Answers kept per user (the newest) and how long each is kept.
    keep_per_user: int = 200
    ttl_s: float = 7 * 24 * 3600.0
    # The writer gathers answers for this long before one write to the store; at most queue_max wait
    # (beyond that they are dropped and counted: a log that falls behind must not grow without bound).
    flush_interval_ms: float = 20.0
    queue_max: int = 100_000

    def problems(self, attribution_window_s: float) -> list[str]:
        found = []
        if self.fatigue_after < 0 or (self.fatigue_after > 0 and not self.write_back):
            found.append(
                "exposures.fatigue_after must be >= 0 and needs exposures.write_back, got "
                f"{self.fatigue_after}"
            )
        if self.keep_per_user < 1 or self.queue_max < 1 or not self.flush_interval_ms >= 0:
            found.append("exposures needs keep_per_user >= 1, queue_max >= 1 and flush_interval_ms >= 0")
        if not self.ttl_s >= max(attribution_window_s, self.fatigue_window_s):
            found.append(
                f"exposures.ttl_s ({self.ttl_s}) must cover experiments.attribution_window_s "
                f"({attribution_window_s}) and exposures.fatigue_window_s ({self.fatigue_window_s})"
            )
        return found


ROLES = ("recommend", "feedback", "catalog", "admin", "internal")


@dataclass
class QuotaConfig:
    """A token bucket: `rate_per_s` RPCs a second on average, up to `burst` at once (0: rate_per_s)."""

    rate_per_s: float = 0.0
    burst: float = 0.0


@dataclass
class CallerConfig:
    """One caller of recd (a service, an operator, recd's own processes) and what it may do."""

    # The caller's name: what logs and the rejection metrics' `caller` label show.
    name: str = ""
    roles: list[str] = field(default_factory=list)
    # Salted hashes of its bearer tokens (`recd security hash-token` prints one); several while one rotates.
    token_hashes: list[str] = field(default_factory=list)
    # Names of its client certificate (a DNS or URI subject alternative name, or the subject's CN) that
    # identify it under mutual TLS.
    cert_names: list[str] = field(default_factory=list)
    # Role -> quota for this caller, overriding auth.quotas for that role.
    quotas: dict[str, QuotaConfig] = field(default_factory=dict)


@dataclass
class AuthConfig:
    """Who may call recd's gRPC surfaces and how often (server/security). Off: every caller is
    "anonymous" with every role (the embedded demo on 127.0.0.1); quotas and the concurrency cap still
    apply."""

    enabled: bool = False
    callers: list[CallerConfig] = field(default_factory=list)
    # A YAML file with more callers (a list in the format of `callers`, e.g. a mounted Secret), re-read
    # when it changes, so tokens are issued and revoked without a restart.
    callers_file: str | None = None
    # Role -> the quota each caller gets for the RPCs of that role (absent: unlimited).
    quotas: dict[str, QuotaConfig] = field(default_factory=dict)
    # Server reflection: open to anyone, to any authenticated caller, or not served.
    reflection: Literal["open", "authenticated", "off"] = "authenticated"
    # This process's own bearer token (a file holding it), sent on its calls to other recd servers (edge
    # to frontends, frontend to shard nodes, the CLI). None: no token is sent.
    token_file: str | None = None

    def problems(self) -> list[str]:
        found = []
        names = [c.name for c in self.callers]
        for i, caller in enumerate(self.callers):
            where = f"auth.callers[{i}]"
            if not caller.name or caller.name in ("unknown", "anonymous"):
                found.append(
                    f"{where}.name must be set and not 'unknown' or 'anonymous', got {caller.name!r}"
                )
            elif names.count(caller.name) > 1:
                found.append(f"{where}.name {caller.name!r} is used by more than one caller")
            found.extend(
                f"{where}.roles: {r!r} is not a role ({', '.join(ROLES)})"
                for r in caller.roles
                if r not in ROLES
            )
            if not caller.token_hashes and not caller.cert_names:
                found.append(f"{where} ({caller.name}) needs token_hashes or cert_names to be recognised")
            found.extend(_quota_problems(caller.quotas, f"{where}.quotas"))
        found.extend(_quota_problems(self.quotas, "auth.quotas"))
        if self.enabled and not self.callers and not self.callers_file:
            found.append("auth.enabled needs auth.callers or auth.callers_file: nobody could call")
        return found


def _quota_problems(quotas: dict[str, QuotaConfig], where: str) -> list[str]:
    found = []
    for role, quota in quotas.items():
        if role not in ROLES:
            found.append(f"{where}: {role!r} is not a role ({', '.join(ROLES)})")
        if not quota.rate_per_s > 0 or quota.burst < 0:
            found.append(f"{where}.{role} needs rate_per_s > 0 and burst >= 0, got {quota}")
    return found


@dataclass
class Config:
    dim: int = 64
    # None keeps everything in memory (tests); a directory makes writes durable.
    data_dir: str | None = "data/recd"
    server: ServerConfig = field(default_factory=ServerConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    exposures: ExposuresConfig = field(default_factory=ExposuresConfig)

    def validate(self) -> None:
        problems = []
        if not 1 <= self.dim <= 4096:
            problems.append(f"dim must be in [1, 4096], got {self.dim}")
        if self.shards.count < 1:
            problems.append(f"shards.count must be >= 1, got {self.shards.count}")
        f = self.shards.feed
        if f.retain_bytes < 1 or f.start_timeout_s <= 0 or f.retry_ms < 0:
            problems.append(f"shards.feed needs retain_bytes >= 1, start_timeout_s > 0, retry_ms >= 0: {f}")
        if self.pipeline.budget_ms <= 0:
            problems.append("pipeline.budget_ms must be > 0")
        for name in _default_steps():
            if name not in self.pipeline.steps:
                problems.append(f"pipeline.steps.{name} is missing")
        for key in ("recommend_steps", "recommend_sources", "similar_steps", "similar_sources"):
            for name in getattr(self.pipeline, key):
                if name not in self.pipeline.steps:
                    problems.append(f"pipeline.{key} names {name!r}, which has no pipeline.steps entry")
        b = self.pipeline.batch
        if b.max_batch < 1 or b.in_flight < 1 or not b.max_wait_ms >= 0:
            problems.append(
                f"pipeline.batch needs max_batch >= 1, in_flight >= 1 and max_wait_ms >= 0, got {b}"
            )
        c = self.pipeline.candidates
        if c.shard_k < 1:
            problems.append(f"pipeline.candidates.shard_k must be >= 1, got {c.shard_k}")
        if not c.shard_k_factor > 0:
            problems.append(f"pipeline.candidates.shard_k_factor must be > 0, got {c.shard_k_factor}")
        for name, value, least in (
            ("ann_k", c.ann_k, 1),
            ("graph_seeds", c.graph_seeds, 0),
            ("graph_hops", c.graph_hops, 1),
            ("graph_limit_per_hop", c.graph_limit_per_hop, 1),
            ("popular_k", c.popular_k, 0),
            ("exact_filter_max_items", c.exact_filter_max_items, 0),
            ("history_limit", c.history_limit, 1),
        ):
            if value < least:
                problems.append(f"pipeline.candidates.{name} must be >= {least}, got {value}")
        if c.graph_hops > 2:
            problems.append(
                f"pipeline.candidates.graph_hops must be 1 or 2 (bounded traversals), got {c.graph_hops}"
            )
        if not 0 <= c.graph_min_score <= 1:
            problems.append(f"pipeline.candidates.graph_min_score must be in [0, 1], got {c.graph_min_score}")
        if self.pipeline.mmr_pool < 1:
            problems.append(f"pipeline.mmr_pool must be >= 1, got {self.pipeline.mmr_pool}")
        if self.shards.index.ef_search < 1:
            problems.append(f"shards.index.ef_search must be >= 1, got {self.shards.index.ef_search}")
        if self.profiles.seen_limit < 1:
            problems.append(f"profiles.seen_limit must be >= 1, got {self.profiles.seen_limit}")
        cl = self.cluster
        if cl.write_acks < 0 or cl.hint_max_items < 0 or not cl.hint_replay_interval_ms > 0:
            problems.append(
                "cluster needs write_acks >= 0 (0: every replica), hint_max_items >= 0 and "
                f"hint_replay_interval_ms > 0, got {cl.write_acks}, {cl.hint_max_items}, "
                f"{cl.hint_replay_interval_ms}"
            )
        problems.extend(self.ranking.problems())
        problems.extend(self.popularity.problems())
        problems.extend(self.workers.problems())
        problems.extend(self.auth.problems())
        problems.extend(self.tracing.problems())
        problems.extend(self.experiments.problems())
        problems.extend(self.exposures.problems(self.experiments.attribution_window_s))
        problems.extend(self.server.limits.problems("server.limits"))
        problems.extend(self.edge.limits.problems("edge.limits"))
        for where, tls in (
            ("server.tls", self.server.tls),
            ("edge.tls", self.edge.tls),
            ("cluster.tls", self.cluster.tls),
        ):
            problems.extend(tls.problems(where))
        for where, client_tls in (
            ("server.client_tls", self.server.client_tls),
            ("edge.origin_tls", self.edge.origin_tls),
            ("edge.cache.tls", self.edge.cache.tls),
            ("cluster.client_tls", self.cluster.client_tls),
            ("cache.tls", self.cache.tls),
            ("profiles.tls", self.profiles.tls),
            ("graph.tls", self.graph.tls),
        ):
            problems.extend(client_tls.problems(where))
        if problems:
            raise ConfigError("; ".join(problems))


class ConfigError(ValueError):
    pass


ENV_PREFIX = "RECD_"


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, overlaid by the YAML file at `path`, overlaid by RECD_* variables."""
    raw: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded
    env = os.environ if environ is None else environ
    top_level = {f.name for f in dataclasses.fields(Config)}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        # RECD_PYTHON, RECD_STACK_DIR, RECD_TEST_*... belong to the scripts, not to the config: a name with
        # no "__" that is not a top-level key is left alone. One with "__" is meant as a config path, so
        # a typo there (RECD_SHARD__COUNT) is still an error.
        if len(keys) == 1 and keys[0] not in top_level:
            continue
        _set_path(raw, keys, yaml.safe_load(value) if value != "" else None)
    config = _build(Config, raw, "")
    config.validate()
    return config


def with_overrides(config: Config, values: Mapping[str, Any], where: str) -> Config:
    """A copy of `config` with dotted key paths set to `values`, type-checked and validated like a config
    file (ConfigError naming `where` and the key)."""
    raw = config_to_dict(config)
    for path, value in values.items():
        _set_path(raw, path.split("."), value)
    try:
        built: Config = _build(Config, raw, "")
        built.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return built


def load_list_file(path: str, where: str, what: str) -> list[Any]:
    """The YAML list in a file kept beside the config (callers, experiments): ConfigError naming `where`
    when it cannot be read, is not YAML or is not a list (`what`: what its entries are)."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or []
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not YAML ({exc})") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of {what}")
    return raw


def build_section(cls: type, raw: Any, where: str) -> Any:
    """A config dataclass (or a list of them, for list[...] types) from raw YAML data, checked like the
    config file: for sections kept in files of their own."""
    return _coerce(cls, raw, where, None)


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(_join(where, k) for k in unknown))}")
    defaults = cls()
    values = {}
    for name in fields:
        default = getattr(defaults, name)
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], _join(where, name), default)
        else:
            values[name] = default
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str, default: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        merged = dataclasses.asdict(default) if default is not None else {}
        merged.update(value if isinstance(value, dict) else {"__bad__": value})
        if "__bad__" in merged:
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(typing.cast(type, tp), merged, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, default)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]", None) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        # A mapping in the file overrides entries of the default mapping, it does not replace it whole.
        out = dict(default) if isinstance(default, dict) else {}
        for k, v in value.items():
            base = default.get(k) if isinstance(default, dict) else None
            out[str(k)] = _coerce(args[1], v, f"{where}.{k}", base)
        return out
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported config type {tp}")
