"""Prometheus metrics of the frontend. Labels carry methods, steps, reasons; never a user or item id."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Dense below and around the 100 ms p99 budget, where the interesting changes happen.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.06,
    0.07,
    0.08,
    0.09,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)
STEP_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COVERAGE_BUCKETS = (0.5, 0.75, 0.9, 0.95, 0.99, 1.0)

RPC_LATENCY = Histogram(
    "recd_rpc_latency_seconds", "Server-side RPC latency", ["method", "code"], buckets=LATENCY_BUCKETS_S
)
RPC_IN_FLIGHT = Gauge("recd_rpc_in_flight", "RPCs being served now")
# Calls refused, by reason: unauthenticated, permission_denied, quota (the caller's quota), concurrency
# (server.max_concurrent_rpcs), deadline (DEADLINE_EXCEEDED), invalid_argument (bad input). caller: a
# name from auth.callers, "anonymous" with auth off, "unknown" when none was recognised (server/security).
RPC_REJECTIONS = Counter(
    "recd_rpc_rejections_total", "RPCs refused, by reason and caller", ["reason", "caller", "method"]
)
# Changed certificate files a TLS listener saw (server/security/tls.py): reloaded, or refused (a pair
# caught half-replaced, a file that does not parse: the previous certificate keeps serving). listener:
# the config key (server.tls, edge.tls, cluster.tls).
TLS_CERTIFICATE_RELOADS = Counter(
    "recd_tls_certificate_reloads_total",
    "Changed certificate files a TLS listener saw",
    ["listener", "outcome"],
)
STEP_LATENCY = Histogram(
    "recd_step_latency_seconds", "Latency of each pipeline step", ["pipeline", "step"], buckets=STEP_BUCKETS_S
)
STEP_OVERRUNS = Counter(
    "recd_step_budget_overruns_total", "Steps that ran out of budget", ["pipeline", "step"]
)
STEP_FAILURES = Counter("recd_step_failures_total", "Steps that raised", ["pipeline", "step"])
DEGRADED = Counter("recd_degraded_responses_total", "Answers missing a source", ["reason"])
COVERAGE = Histogram(
    "recd_shard_coverage_ratio", "shards_ok / shards_total per query", buckets=COVERAGE_BUCKETS
)
SHARD_LATENCY = Histogram(
    "recd_shard_call_latency_seconds",
    "Latency of one call to a shard node",
    ["node", "op"],
    buckets=STEP_BUCKETS_S,
)
SHARD_CALLS = Counter("recd_shard_calls_total", "Calls to shard nodes", ["node", "op", "outcome"])
REQUEST_BATCH = Histogram(
    "recd_request_batch_size", "Requests per pipeline run", ["pipeline"], buckets=BATCH_BUCKETS
)
DEADLINE_ANSWERS = Counter(
    "recd_deadline_answers_total",
    "Requests answered from the popular list because their deadline passed while their batch ran",
    ["pipeline"],
)
SEARCH_BATCH = Histogram("recd_ann_batch_size", "Queries per batched shard search", buckets=BATCH_BUCKETS)
RANK_BATCH = Histogram(
    "recd_rank_batch_size", "Requests per ranking launch", ["ranker"], buckets=BATCH_BUCKETS
)
RANK_FALLBACKS = Counter("recd_rank_fallbacks_total", "Rank batches moved to the fallback ranker", ["ranker"])
# Hot model reload (server/ranking/registry.py): loads of changed model files, "loaded" or "refused".
MODEL_RELOADS = Counter("recd_model_reloads_total", "Model file loads by outcome", ["outcome"])
MODEL_LOADED = Gauge(
    "recd_model_loaded", "Model versions loaded (role: default or loaded)", ["version", "role"]
)
CACHE_REQUESTS = Counter("recd_cache_requests_total", "Cache lookups", ["tier", "outcome"])
BACKEND_CALLS = Counter("recd_backend_calls_total", "Round trips to backends", ["backend", "op", "outcome"])
ITEMS = Gauge("recd_items", "Items in the catalogue")
# The catalogue replica following the shards' change feeds (server/catalog/feed.py): from a shard
# applying a change to this frontend applying it (clocks of different machines: NTP-level accuracy).
FEED_LAG = Histogram(
    "recd_catalog_feed_lag_seconds",
    "Delay from a shard applying an item change to this frontend's catalogue applying it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FEED_RESYNCS = Counter("recd_catalog_feed_resyncs_total", "Shards re-read with a scan by the catalogue feed")
FEED_ERRORS = Counter(
    "recd_catalog_feed_errors_total", "Catalogue feed streams that failed (replica switched)"
)
# outcome ok / error: this frontend re-reading the decayed popularity counts from the profile store.
POPULARITY_REFRESHES = Counter(
    "recd_popularity_refreshes_total", "Reads of the shared popularity counts", ["outcome"]
)


# --- experiments (server/experiments): labels are experiment and variant names from the config only --------
EXPERIMENT_RELOADS = Counter(
    "recd_experiments_reloads_total", "Loads of a changed experiments file by outcome", ["outcome"]
)
# traffic x the variant's share: the expected share of all users, for sample-ratio checks in PromQL.
EXPERIMENT_SHARE = Gauge(
    "recd_experiment_variant_share", "Share of all users assigned to the variant", ["experiment", "variant"]
)
EXPERIMENT_ANSWERS = Counter(
    "recd_experiment_answers_total", "Recommend answers served by the variant", ["experiment", "variant"]
)
EXPERIMENT_IMPRESSIONS = Counter(
    "recd_experiment_impressions_total", "Items served by the variant", ["experiment", "variant"]
)
# action: one of experiments.outcome_actions, or "other".
EXPERIMENT_ACTIONS = Counter(
    "recd_experiment_actions_total",
    "Interactions attributed to an item the variant served the user",
    ["experiment", "variant", "action"],
)
EXPERIMENT_LATENCY = Histogram(
    "recd_experiment_latency_seconds",
    "Recommend latency on the frontend by variant",
    ["experiment", "variant"],
    buckets=LATENCY_BUCKETS_S,
)
EXPERIMENT_DIVERSITY = Histogram(
    "recd_experiment_list_diversity",
    "Mean pairwise cosine distance of the items of an answer, by variant",
    ["experiment", "variant"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5),
)
ATTRIBUTION_ERRORS = Counter(
    "recd_experiment_attribution_errors_total",
    "Interactions not attributed (attribution failed or its queue was full); they are recorded all the same",
)
# outcome written / dropped (queue_max reached) / failed (the store refused the write).
EXPOSURES_LOGGED = Counter("recd_exposures_logged_total", "Answers given to the exposure log", ["outcome"])


def serve_metrics(address: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose /metrics over HTTP on `address` (host:port) from a daemon thread."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)


# --- edge tier (`recd edge`) ---------------------------------------------------------------------------
# level l1 (in-process) / l2 (Redis): outcome hit, stale (served while one refresh runs), miss, error,
# deleted (an entry refused: it may hold an item deleted since it was stored; the lookup goes on as a miss);
# level origin: outcome coalesced (a miss that joined an identical fill already in flight).
EDGE_CACHE = Counter("recd_edge_cache_requests_total", "Edge cache lookups", ["level", "outcome"])
EDGE_ORIGIN_LATENCY = Histogram(
    "recd_edge_origin_latency_seconds",
    "Latency of one call from the edge to an origin frontend (each attempt)",
    ["method", "code"],
    buckets=LATENCY_BUCKETS_S,
)
EDGE_ORIGIN_RETRIES = Counter(
    "recd_edge_origin_retries_total", "UNAVAILABLE answers from an origin", ["outcome"]
)
EDGE_REFRESHES = Counter("recd_edge_refreshes_total", "Stale-while-revalidate refreshes", ["outcome"])
EDGE_USER_VERSION_BUMPS = Counter(
    "recd_edge_user_version_bumps_total", "Users whose cached answers were invalidated"
)
EDGE_L1_BYTES = Gauge("recd_edge_l1_bytes", "Bytes held by the edge's in-process cache")
EDGE_ORIGINS = Gauge("recd_edge_origins", "Origin addresses the edge balances over (targets resolved)")
# The edge following Catalog.WatchDeletes (server/edge/deletes.py).
EDGE_DELETES_WATCHED = Gauge("recd_edge_deletes_watch_up", "1 while the edge follows a deletes stream")
EDGE_RECENT_DELETES = Gauge("recd_edge_recent_deletes", "Deleted item ids the edge checks cached answers for")
# reason stream (the origin's log did not reach back to where the edge resumed), bound (the edge's own
# bound on ids overflowed): cached answers stored before it are refused.
EDGE_DELETES_GAPS = Counter("recd_edge_deletes_gaps_total", "Deletes the edge may have missed", ["reason"])


# --- shard nodes as a cluster (server/cluster, server/routing) ---------------------------------------------
# Every Search sent to a node, hedges and failovers included, is also in recd_shard_calls_total{op=search}.
SHARD_HEDGES = Counter(
    "recd_shard_hedges_total", "Second requests sent because a node was late", ["node", "outcome"]
)
SHARD_FAILOVERS = Counter(
    "recd_shard_failovers_total", "Shards asked of another replica after an error", ["op"]
)
SHARD_EXTRA_CALLS = Counter(
    "recd_shard_extra_search_calls_total",
    "Search RPCs beyond the first wave (at most one per node per batch): hedges and failovers",
    ["kind"],
)
SHARD_PARTIAL = Counter(
    "recd_shard_partial_searches_total", "Batched searches answered without every shard", ["reason"]
)
SHARD_NODE_UP = Gauge("recd_shard_node_up", "1 while a node's circuit is closed, 0 while open", ["node"])
SHARD_BREAKER_OPENED = Counter("recd_shard_breaker_opened_total", "Node circuits opened", ["node"])
SHARD_PROBES = Counter("recd_shard_probes_total", "Background probes of shard nodes", ["node", "outcome"])
LAYOUT_EPOCH = Gauge("recd_cluster_layout_epoch", "Epoch of the cluster layout this frontend routes by")
WRITE_RETRIES = Counter("recd_shard_write_retries_total", "Writes retried on the shard nodes", ["reason"])
# Hinted handoff (server/routing/handoff.py): writes a replica missed, held until it answers again.
WRITE_HINTS_PENDING = Gauge("recd_write_hints_pending", "Missed writes held for a shard node", ["node"])
WRITE_HINTS_REPLAYED = Counter(
    "recd_write_hints_replayed_total", "Missed writes delivered to a shard node once it was back", ["node"]
)
WRITE_HINTS_DROPPED = Counter(
    "recd_write_hints_dropped_total",
    "Missed writes given up (handoff full, refused, shard moved): the node needs a repair",
    ["node"],
)


# --- worker group (`recd serve --workers N`, server/workers) ---------------------------------------------
# The supervisor's own series, registered only in its registry (server/workers/metrics_view.py), beside
# every worker's series labelled worker="<index>"; a single frontend does not export them.
WORKER_RESTARTS = Counter(
    "recd_worker_restarts_total",
    "Processes of the group restarted after they died (role: worker, state_node, shard_node)",
    ["role"],
    registry=None,
)
WORKERS_SERVING = Gauge(
    "recd_workers_serving", "Workers of the group answering health SERVING", registry=None
)
WORKER_SCRAPE_ERRORS = Counter(
    "recd_worker_scrape_errors_total", "Worker metrics pages the supervisor could not read", registry=None
)
