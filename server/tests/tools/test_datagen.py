from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from server.tools import datagen

NOW_MS = 1_750_000_000_000
SMALL = {"items": 3000, "users": 400, "dim": 16, "clusters": 12, "now_ms": NOW_MS}
FILES = ("items.parquet", "users.parquet", "interactions.parquet", "edges.parquet")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datagen.Manifest]:
    out = tmp_path_factory.mktemp("dataset")
    return out, datagen.generate(out, seed=11, **SMALL)  # type: ignore[arg-type]


def test_files_and_manifest_agree(dataset: tuple[Path, datagen.Manifest]) -> None:
    out, manifest = dataset
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["items"] == manifest.items == 3000
    assert on_disk["users"] == manifest.users == 400
    assert on_disk["dim"] == 16 and on_disk["seed"] == 11 and on_disk["clusters"] == 12
    assert pq.read_metadata(out / "items.parquet").num_rows == manifest.items
    assert pq.read_metadata(out / "users.parquet").num_rows == manifest.users
    assert pq.read_metadata(out / "interactions.parquet").num_rows == manifest.interactions
    assert pq.read_metadata(out / "edges.parquet").num_rows == manifest.edges > 0


def test_schemas(dataset: tuple[Path, datagen.Manifest]) -> None:
    out, _ = dataset
    items = pq.read_schema(out / "items.parquet")
    assert items.field("item_id").type == pa.string()
    assert items.field("embedding").type == pa.list_(pa.float32(), 16)
    assert items.field("attributes").type == pa.map_(pa.string(), pa.string())
    assert items.field("popularity").type == pa.float32()
    assert items.field("created_at_ms").type == pa.int64()
    users = pq.read_schema(out / "users.parquet")
    assert users.field("embedding").type == pa.list_(pa.float32())
    interactions = pq.read_schema(out / "interactions.parquet")
    assert interactions.names == ["user_id", "item_id", "action", "weight", "timestamp_ms"]
    assert interactions.field("weight").type == pa.float32()
    edges = pq.read_schema(out / "edges.parquet")
    assert edges.names == ["src_item_id", "dst_item_id", "score"]


def test_item_contents(dataset: tuple[Path, datagen.Manifest]) -> None:
    out, _ = dataset
    items = pq.read_table(out / "items.parquet")
    vectors = items.column("embedding").combine_chunks().values.to_numpy().reshape(-1, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert items.column("item_id")[0].as_py() == "i000000"
    attributes = [dict(a) for a in items.column("attributes").to_pylist()]
    assert {key for a in attributes for key in a} == {"category", "lang", "price_band"}
    assert {a["price_band"] for a in attributes} == {"low", "mid", "high"}
    assert {a["lang"] for a in attributes} <= set(datagen.LANGS)
    assert 10 <= len({a["category"] for a in attributes}) <= 30
    popularity = items.column("popularity").to_numpy()
    assert popularity.max() == pytest.approx(1.0) and popularity.min() > 0
    assert popularity.max() > 50 * np.median(popularity)  # heavy tail
    created = items.column("created_at_ms").to_numpy()
    assert created.max() <= NOW_MS and created.min() >= NOW_MS - 365 * datagen.DAY_MS


def test_users_and_interactions(dataset: tuple[Path, datagen.Manifest]) -> None:
    out, manifest = dataset
    users = pq.read_table(out / "users.parquet")
    assert users.column("user_id")[0].as_py() == "u00000"
    with_vector = [v for v in users.column("embedding").to_pylist() if v is not None]
    assert len(with_vector) == manifest.users_with_embedding
    assert 0.04 < len(with_vector) / manifest.users < 0.2
    np.testing.assert_allclose(np.linalg.norm(np.array(with_vector), axis=1), 1.0, atol=1e-5)

    interactions = pq.read_table(out / "interactions.parquet").to_pydict()
    by_user: dict[str, list[int]] = {}
    for user, ts in zip(interactions["user_id"], interactions["timestamp_ms"], strict=True):
        by_user.setdefault(user, []).append(ts)
    assert len(by_user) == manifest.users  # every user has at least one interaction
    assert all(all(a < b for a, b in itertools.pairwise(t)) for t in by_user.values())
    assert max(len(t) for t in by_user.values()) <= 500
    weight_of = dict(zip(datagen.ACTIONS, datagen.ACTION_WEIGHTS, strict=True))
    assert all(weight_of[a] == w for a, w in zip(interactions["action"], interactions["weight"], strict=True))


def test_same_seed_same_data_and_other_seed_other_data(tmp_path: Path) -> None:
    tiny = {**SMALL, "items": 500, "users": 60}
    datagen.generate(tmp_path / "a", seed=5, **tiny)  # type: ignore[arg-type]
    datagen.generate(tmp_path / "b", seed=5, **tiny)  # type: ignore[arg-type]
    datagen.generate(tmp_path / "c", seed=6, **tiny)  # type: ignore[arg-type]
    for name in FILES:
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))
    assert not pq.read_table(tmp_path / "a" / "items.parquet").equals(
        pq.read_table(tmp_path / "c" / "items.parquet")
    )


def test_histories_favour_favourite_clusters_and_popular_items() -> None:
    rng = np.random.default_rng(3)
    catalogue = datagen._make_items(rng, 5000, 16, 20, NOW_MS)
    population = datagen._make_users(rng, 1000, catalogue, 30.0, 500, 0.85, NOW_MS)
    clusters = catalogue.cluster[population.history_items]
    users = population.history_users
    used = np.arange(3)[None, :] < population.favourite_counts[:, None]
    favourite = ((population.favourites[users] == clusters[:, None]) & used[users]).any(axis=1)
    # 85% drawn from favourites, plus the popular-anywhere draws that happen to land in one.
    assert 0.85 <= favourite.mean() <= 0.95
    mean_length = len(users) / 1000
    assert 20 <= mean_length <= 40
    assert np.bincount(users).min() >= 1
    # Popularity-weighted: the items interacted with are far more popular than the average item.
    assert catalogue.popularity[population.history_items].mean() > 3 * catalogue.popularity.mean()


def test_items_sit_near_their_cluster_centre_but_not_on_it() -> None:
    rng = np.random.default_rng(4)
    catalogue = datagen._make_items(rng, 4000, 64, 50, NOW_MS)
    cosine = np.einsum("ij,ij->i", catalogue.vectors, catalogue.centres[catalogue.cluster])
    assert 0.45 < np.median(cosine) < 0.8
