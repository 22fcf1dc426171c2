"""A synthetic catalogue with the structure recommendations rely on, generated vectorised and seeded.

Items sit in Gaussian clusters around random unit centres, with enough noise (cosine to the centre about
0.5-0.7) that nearest neighbours cross cluster borders and ANN recall is a real measurement. Users have
one to three favourite clusters and mostly interact with popular items from them, so a good recommender
can beat the popularity baseline, and co-interaction edges connect items of the same taste.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from server.tools.graph_build import derive_edge_arrays

CATEGORIES = (
    "books", "music", "movies", "games", "toys", "garden", "kitchen", "tools", "sports", "outdoors",
    "beauty", "health", "baby", "pets", "office", "computers", "phones", "audio", "cameras", "tv",
    "fashion", "shoes", "jewelry", "watches", "auto", "crafts", "grocery", "home", "lighting", "travel",
)  # fmt: skip
LANGS = ("en", "de", "fr", "es", "ja")
LANG_WEIGHTS = (0.5, 0.15, 0.13, 0.14, 0.08)
PRICE_BANDS = ("low", "mid", "high")
PRICE_WEIGHTS = (0.5, 0.35, 0.15)
ACTIONS = ("view", "click", "purchase")
ACTION_WEIGHTS = (1.0, 2.0, 5.0)
ACTION_PROBABILITIES = (0.75, 0.2, 0.05)

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Manifest:
    items: int
    users: int
    users_with_embedding: int
    interactions: int
    edges: int
    dim: int
    clusters: int
    seed: int
    now_ms: int
    created: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def generate(
    out_dir: Path | str,
    items: int = 200_000,
    users: int = 20_000,
    dim: int = 64,
    clusters: int = 200,
    seed: int = 7,
    *,
    mean_history: float = 30.0,
    max_history: int = 500,
    favourite_share: float = 0.85,
    profile_share: float = 0.10,
    edge_top_n: int = 20,
    edge_window: int = 10,
    edge_min_count: int = 2,
    now_ms: int | None = None,
) -> Manifest:
    """Write items/users/interactions/edges Parquet files and manifest.json into `out_dir`.

    The output depends only on the arguments: `now_ms` (the end of the generated time range) defaults
    to today's UTC midnight, so pass it explicitly to reproduce a dataset on another day.
    """
    if items < 1 or users < 1 or clusters < 1 or dim < 1:
        raise ValueError("items, users, clusters and dim must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if now_ms is None:
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        now_ms = int(today.timestamp() * 1000)
    rng = np.random.default_rng(seed)

    catalogue = _make_items(rng, items, dim, clusters, now_ms)
    population = _make_users(rng, users, catalogue, mean_history, max_history, favourite_share, now_ms)
    with_embedding = rng.random(users) < profile_share
    user_vectors = _profile_vectors(catalogue.centres, population.favourites, population.favourite_counts)

    src, dst, score = derive_edge_arrays(
        population.history_users,
        population.history_items,
        population.history_times,
        top_n=edge_top_n,
        window=edge_window,
        min_count=edge_min_count,
    )

    item_ids = _ids("i", items)
    user_ids = _ids("u", users, width=5)
    pq.write_table(_items_table(item_ids, catalogue), out / "items.parquet")
    pq.write_table(
        _users_table(user_ids, user_vectors, with_embedding, population.langs), out / "users.parquet"
    )
    pq.write_table(_interactions_table(user_ids, item_ids, population), out / "interactions.parquet")
    item_names = pa.array(item_ids, pa.string())
    edges = pa.table(
        {
            "src_item_id": item_names.take(pa.array(src)),
            "dst_item_id": item_names.take(pa.array(dst)),
            "score": pa.array(score, pa.float32()),
        }
    )
    pq.write_table(edges, out / "edges.parquet")

    manifest = Manifest(
        items=items,
        users=users,
        users_with_embedding=int(with_embedding.sum()),
        interactions=len(population.history_items),
        edges=len(src),
        dim=dim,
        clusters=clusters,
        seed=seed,
        now_ms=now_ms,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    (out / "manifest.json").write_text(manifest.to_json() + "\n")
    return manifest


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What `generate` drew but did not write: each item's cluster and each user's favourite clusters,
    so that tests can check recommendations against the users' real tastes."""

    item_cluster: npt.NDArray[np.int64]  # by item number (i000042 -> 42)
    favourites: list[frozenset[int]]  # by user number (u00042 -> 42)


def ground_truth(
    items: int,
    users: int,
    dim: int,
    clusters: int = 200,
    seed: int = 7,
    *,
    now_ms: int,
    mean_history: float = 30.0,
    max_history: int = 500,
    favourite_share: float = 0.85,
) -> GroundTruth:
    """Replays the draws of `generate` called with the same arguments (`now_ms` included)."""
    rng = np.random.default_rng(seed)
    catalogue = _make_items(rng, items, dim, clusters, now_ms)
    population = _make_users(rng, users, catalogue, mean_history, max_history, favourite_share, now_ms)
    favourites = [
        frozenset(row[:count].tolist())
        for row, count in zip(population.favourites, population.favourite_counts.tolist(), strict=True)
    ]
    return GroundTruth(catalogue.cluster, favourites)


@dataclass(frozen=True, slots=True)
class _Catalogue:
    centres: npt.NDArray[np.float32]
    cluster: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    category: npt.NDArray[np.int64]
    lang: npt.NDArray[np.int64]
    price_band: npt.NDArray[np.int64]
    popularity: npt.NDArray[np.float32]
    created_at_ms: npt.NDArray[np.int64]
    cluster_weight: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class _Population:
    favourites: npt.NDArray[np.int64]  # (users, 3), only the first favourite_counts[u] are used
    favourite_counts: npt.NDArray[np.int64]
    langs: npt.NDArray[np.int64]
    history_users: npt.NDArray[np.int64]
    history_items: npt.NDArray[np.int64]
    history_times: npt.NDArray[np.int64]
    history_actions: npt.NDArray[np.int64]


def _unit(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _make_items(rng: np.random.Generator, n: int, dim: int, clusters: int, now_ms: int) -> _Catalogue:
    centres = _unit(rng.standard_normal((clusters, dim)))
    # Uneven cluster sizes and popularity: some tastes are common, most are niche.
    cluster_weight = rng.dirichlet(np.full(clusters, 2.0))
    cluster = rng.choice(clusters, size=n, p=cluster_weight)
    # Noise of norm ~`spread` around a unit centre puts items at cosine 1/sqrt(1+spread^2) from it.
    spread = rng.uniform(1.0, 1.6, size=clusters)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread[cluster] / np.sqrt(dim))[:, None]
    vectors = _unit(centres[cluster] + noise)

    main_category = rng.integers(0, len(CATEGORIES), size=clusters)
    on_theme = rng.random(n) < 0.8
    category = np.where(on_theme, main_category[cluster], rng.integers(0, len(CATEGORIES), size=n))
    lang = rng.choice(len(LANGS), size=n, p=LANG_WEIGHTS)
    price_band = rng.choice(len(PRICE_BANDS), size=n, p=PRICE_WEIGHTS)

    # Pareto gives the heavy tail; the cluster factor makes popular tastes have more popular items.
    raw = (rng.pareto(1.2, size=n) + 1.0) * (0.5 + cluster_weight[cluster] * clusters)
    popularity = (raw / raw.max()).astype(np.float32)
    created_at_ms = now_ms - rng.integers(0, 365 * DAY_MS, size=n)
    return _Catalogue(
        centres, cluster, vectors, category, lang, price_band, popularity, created_at_ms, cluster_weight
    )


def _make_users(
    rng: np.random.Generator,
    n: int,
    catalogue: _Catalogue,
    mean_history: float,
    max_history: int,
    favourite_share: float,
    now_ms: int,
) -> _Population:
    clusters = len(catalogue.centres)
    favourite_counts = rng.integers(1, 4, size=n)
    favourites = rng.choice(clusters, size=(n, 3), p=catalogue.cluster_weight)
    langs = rng.choice(len(LANGS), size=n, p=LANG_WEIGHTS)

    # Log-normal lengths: most users have a handful of events, a few have hundreds.
    sigma = 1.1
    mu = np.log(max(mean_history - 1.0, 0.5)) - sigma**2 / 2
    lengths = np.minimum(1 + np.floor(rng.lognormal(mu, sigma, size=n)).astype(np.int64), max_history)
    history_users = np.repeat(np.arange(n, dtype=np.int64), lengths)
    total = len(history_users)

    # Which cluster each event comes from: a favourite (chosen uniformly) or anywhere.
    pick = np.floor(rng.random(total) * favourite_counts[history_users]).astype(np.int64)
    favourite_cluster = favourites[history_users, pick]
    from_favourite = rng.random(total) < favourite_share
    items = np.empty(total, dtype=np.int64)
    items[from_favourite] = _sample_in_clusters(rng, catalogue, favourite_cluster[from_favourite])
    anywhere = ~from_favourite
    global_cdf = np.cumsum(catalogue.popularity, dtype=np.float64)
    global_cdf /= global_cdf[-1]
    items[anywhere] = np.minimum(
        np.searchsorted(global_cdf, rng.random(int(anywhere.sum())), side="right"), len(global_cdf) - 1
    )

    # Increasing timestamps per user: exponential gaps counted back from the user's last activity.
    gaps = rng.exponential(2 * 3_600_000, size=total).astype(np.int64) + 1_000
    ends = np.cumsum(lengths)
    cumulative = np.cumsum(gaps)
    before_user = np.repeat(cumulative[ends - 1] - np.r_[0, cumulative[ends[:-1] - 1]], lengths)
    within_user = cumulative - np.repeat(np.r_[0, cumulative[ends[:-1] - 1]], lengths)
    last_seen = now_ms - rng.integers(0, 30 * DAY_MS, size=n)
    times = np.repeat(last_seen, lengths) - (before_user - within_user)
    actions = rng.choice(len(ACTIONS), size=total, p=ACTION_PROBABILITIES)
    return _Population(favourites, favourite_counts, langs, history_users, items, times, actions)


def _sample_in_clusters(
    rng: np.random.Generator, catalogue: _Catalogue, clusters: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Popularity-weighted items of the given clusters, one per entry, all at once.

    Items sorted by cluster get the key cluster + (CDF of popularity within the cluster), which lies in
    (c, c+1]; searching c + u for a uniform u then lands on an item of cluster c with the right weight.
    """
    by_cluster = np.argsort(catalogue.cluster, kind="stable")
    sorted_cluster = catalogue.cluster[by_cluster]
    weights = catalogue.popularity[by_cluster].astype(np.float64)
    cumulative = np.cumsum(weights)
    starts = np.searchsorted(sorted_cluster, np.arange(len(catalogue.centres)), side="left")
    ends = np.searchsorted(sorted_cluster, np.arange(len(catalogue.centres)), side="right")
    before = np.where(starts > 0, cumulative[np.maximum(starts - 1, 0)], 0.0)
    totals = np.where(ends > starts, cumulative[np.maximum(ends - 1, 0)] - before, 1.0)
    keys = sorted_cluster + (cumulative - before[sorted_cluster]) / totals[sorted_cluster]
    # A cluster without items (possible for tiny catalogues) borrows from the popularity of all items.
    empty = ends[clusters] == starts[clusters]
    if empty.any():
        clusters = clusters.copy()
        clusters[empty] = sorted_cluster[rng.integers(0, len(sorted_cluster), size=int(empty.sum()))]
    targets = clusters + rng.random(len(clusters))
    positions = np.searchsorted(keys, targets, side="right")
    positions = np.clip(positions, starts[clusters], ends[clusters] - 1)
    return by_cluster[positions]


def _profile_vectors(
    centres: npt.NDArray[np.float32],
    favourites: npt.NDArray[np.int64],
    favourite_counts: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    used = np.arange(favourites.shape[1])[None, :] < favourite_counts[:, None]
    summed = (centres[favourites] * used[:, :, None]).sum(axis=1)
    return _unit(summed)


def _ids(prefix: str, n: int, width: int = 6) -> list[str]:
    width = max(width, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _string_map(keys: tuple[str, ...], values: list[pa.Array]) -> pa.MapArray:
    """A map<string,string> column with the same keys in every row, built without a Python loop."""
    n = len(values[0])
    key_column = pa.array(np.tile(np.array(keys, dtype=object), n), pa.string())
    interleaved = np.empty(n * len(keys), dtype=object)
    for position, column in enumerate(values):
        interleaved[position :: len(keys)] = column.to_numpy(zero_copy_only=False)
    offsets = pa.array(np.arange(0, n * len(keys) + 1, len(keys), dtype=np.int32))
    return pa.MapArray.from_arrays(offsets, key_column, pa.array(interleaved, pa.string()))


def _names(names: tuple[str, ...], codes: npt.NDArray[np.int64]) -> pa.Array:
    return pa.array(np.array(names, dtype=object)[codes], pa.string())


def _items_table(item_ids: list[str], catalogue: _Catalogue) -> pa.Table:
    dim = catalogue.vectors.shape[1]
    attributes = _string_map(
        ("category", "lang", "price_band"),
        [
            _names(CATEGORIES, catalogue.category),
            _names(LANGS, catalogue.lang),
            _names(PRICE_BANDS, catalogue.price_band),
        ],
    )
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(catalogue.vectors.ravel()), dim),
            "attributes": attributes,
            "popularity": pa.array(catalogue.popularity, pa.float32()),
            "created_at_ms": pa.array(catalogue.created_at_ms, pa.int64()),
        }
    )


def _users_table(
    user_ids: list[str],
    vectors: npt.NDArray[np.float32],
    with_embedding: npt.NDArray[np.bool_],
    langs: npt.NDArray[np.int64],
) -> pa.Table:
    dim = vectors.shape[1]
    lengths = np.where(with_embedding, dim, 0)
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    embedding = pa.ListArray.from_arrays(
        offsets, pa.array(vectors[with_embedding].ravel()), mask=pa.array(~with_embedding)
    )
    return pa.table(
        {
            "user_id": pa.array(user_ids, pa.string()),
            "embedding": embedding,
            "attributes": _string_map(("lang",), [_names(LANGS, langs)]),
        }
    )


def _interactions_table(user_ids: list[str], item_ids: list[str], population: _Population) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(user_ids, pa.string()).take(pa.array(population.history_users)),
            "item_id": pa.array(item_ids, pa.string()).take(pa.array(population.history_items)),
            "action": _names(ACTIONS, population.history_actions),
            "weight": pa.array(np.array(ACTION_WEIGHTS, np.float32)[population.history_actions]),
            "timestamp_ms": pa.array(population.history_times, pa.int64()),
        }
    )
