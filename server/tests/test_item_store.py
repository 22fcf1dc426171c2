from __future__ import annotations

import numpy as np
import pytest

from server import _core
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata, decode_metadata, encode_metadata


def make_store() -> ItemStore:
    store = ItemStore(2, capacity=2)  # tiny capacity: upserts must grow every column
    ids = [f"i{n}" for n in range(6)]
    vectors = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (6, 1))
    meta = [
        ItemMetadata({"lang": ("en", "de")[n % 2], "tier": "x"}, float(10**n), 1000 * n) for n in range(6)
    ]
    meta[5] = ItemMetadata({"lang": "de"}, 1e5, 5000)  # no "tier"
    store.upsert(ids, _core.stable_hash64(ids), vectors, meta)
    return store


def test_filters_use_attribute_codes() -> None:
    store = make_store()
    rows = store.rows_of([f"i{n}" for n in range(6)])
    assert store.filter_mask(rows, {"lang": frozenset({"de"})}).tolist() == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    assert store.filter_mask(rows, {"tier": frozenset({"x"})}).tolist() == [True] * 5 + [False]
    assert not store.filter_mask(rows, {"lang": frozenset({"fr"})}).any()
    assert not store.filter_mask(rows, {"colour": frozenset({"red"})}).any()


def test_popular_is_ordered_filtered_and_forgets_deleted_items() -> None:
    store = make_store()
    assert [store.item_id(r) for r in store.popular(3)] == ["i5", "i4", "i3"]
    assert [store.item_id(r) for r in store.popular(2, {"lang": frozenset({"en"})})] == ["i4", "i2"]
    store.delete(["i5"])
    assert [store.item_id(r) for r in store.popular(2)] == ["i4", "i3"]
    assert store.row_of("i5") is None and len(store) == 5


def test_reupsert_keeps_the_row_and_replaces_attributes() -> None:
    store = make_store()
    row = store.row_of("i1")
    store.upsert(
        ["i1"],
        _core.stable_hash64(["i1"]),
        np.array([[0.0, 1.0]], np.float32),
        [ItemMetadata({"lang": "fr"}, 1.0, 0)],
    )
    assert store.row_of("i1") == row
    assert store.metadata(row).attributes == {"lang": "fr"}
    assert not store.filter_mask(np.array([row]), {"tier": frozenset({"x"})}).any()
    np.testing.assert_allclose(store.vectors(np.array([row])), [[0.0, 1.0]], atol=1e-3)


def test_popularity_feature_is_unit_free_and_bounded() -> None:
    store = make_store()
    rows = store.rows_of([f"i{n}" for n in range(6)])
    feature = store.popularity_feature(rows)
    assert feature.max() == np.float32(1.0) and (np.diff(feature) > 0).all()
    # the same catalogue with popularity in other units gets the same feature
    scaled = ItemStore(2)
    ids = [f"i{n}" for n in range(6)]
    scaled.upsert(
        ids,
        _core.stable_hash64(ids),
        np.ones((6, 2), np.float32),
        [ItemMetadata({}, float(10**n) * 1e-6, 0) for n in range(6)],
    )
    np.testing.assert_allclose(scaled.popularity_feature(scaled.rows_of(ids)), feature, rtol=1e-4)


def test_labels_resolve_to_rows() -> None:
    store = make_store()
    labels = _core.stable_hash64(["i2", "nope", "i0"])
    assert store.lookup_labels(labels.tolist()).tolist() == [store.row_of("i2"), -1, store.row_of("i0")]


def test_metadata_payload_round_trip() -> None:
    meta = ItemMetadata({"lang": "日本語", "x": "1"}, 2.5, 1234)
    assert decode_metadata(encode_metadata(meta)) == meta


def test_popular_order_is_rebuilt_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.catalog import item_store

    store = make_store()
    assert store.item_id(int(store.popular(1)[0])) == "i5"
    store.upsert(
        ["hot"], _core.stable_hash64(["hot"]), np.ones((1, 2), np.float32), [ItemMetadata({}, 1e9, 0)]
    )
    # Within the interval the order is not rebuilt (a write must not make the next request sort the catalogue).
    assert store.item_id(int(store.popular(1)[0])) == "i5"
    monkeypatch.setattr(item_store, "_REBUILD_INTERVAL_S", 0.0)
    assert store.item_id(int(store.popular(1)[0])) == "hot"


def counted_store(**kwargs: object) -> ItemStore:
    """Four items with priors 4, 3, 2, 1 (a > b > c > d) and no interactions yet."""
    store = ItemStore(2, **kwargs)  # type: ignore[arg-type]
    ids = ["a", "b", "c", "d"]
    meta = [ItemMetadata({}, float(p), 0) for p in (4, 3, 2, 1)]
    store.upsert(ids, _core.stable_hash64(ids), np.ones((4, 2), np.float32), meta)
    return store


def order(store: ItemStore, list_name: str | None = None) -> list[str]:
    return [store.item_id(int(r)) for r in store.popular(10, None, list_name)]


def test_counts_blend_with_the_prior_and_lists_order_differently() -> None:
    store = counted_store(prior_weight=2.0, popular_list="all_time", feature_list="trending")
    store.set_popularity_counts("trending", {"d": 10.0, "c": 1.0, "not-in-catalogue": 99.0})
    store.set_popularity_counts("all_time", {"c": 5.0})
    rows = store.rows_of(["a", "b", "c", "d"])
    # prior_weight x prior + count
    np.testing.assert_allclose(store.popularity(rows, "trending"), [8, 6, 5, 12])
    np.testing.assert_allclose(store.popularity(rows, "all_time"), [8, 6, 9, 2])
    np.testing.assert_allclose(store.popularity(rows, "no-such-list"), [8, 6, 4, 2])
    assert order(store, "trending") == ["d", "a", "b", "c"]
    assert order(store, "all_time") == ["c", "a", "b", "d"]
    assert order(store) == order(store, "all_time")  # popular_list is the default
    # The ranking feature reads feature_list: d is the most popular item there.
    assert store.popularity_feature(rows).argmax() == 3
    # The caller-supplied popularity is still what the item's metadata says.
    assert store.metadata(int(rows[3])).popularity == 1.0


def test_a_refresh_replaces_counts_and_never_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.catalog import item_store

    monkeypatch.setattr(item_store, "_REBUILD_INTERVAL_S", 0.0)
    store = counted_store()
    store.set_popularity_counts("all_time", {"d": 10.0})
    store.set_popularity_counts("all_time", {"d": 10.0})
    rows = store.rows_of(["d"])
    assert store.popularity(rows, "all_time").tolist() == [11.0]
    assert order(store)[0] == "d"
    store.set_popularity_counts("all_time", {})  # d's interactions decayed away
    assert order(store) == ["a", "b", "c", "d"]


def test_items_added_after_a_refresh_count_from_the_next_one() -> None:
    store = counted_store()
    store.set_popularity_counts("all_time", {"d": 1.0, "e": 7.0})
    store.upsert(["e"], _core.stable_hash64(["e"]), np.ones((1, 2), np.float32), [ItemMetadata({}, 0.5, 0)])
    rows = store.rows_of(["d", "e"])
    assert store.popularity(rows, "all_time").tolist() == [2.0, 0.5]
    store.set_popularity_counts("all_time", {"d": 1.0, "e": 7.0})
    assert store.popularity(rows, "all_time").tolist() == [2.0, 7.5]


def test_popular_skips_excluded_labels_before_cutting_the_list() -> None:
    store = make_store()
    seen = np.sort(_core.stable_hash64(["i5", "i4", "i2"]))
    top = store.popular(2, excluded=seen)
    assert [store.item_id(int(r)) for r in top] == ["i3", "i1"]
    filtered = store.popular(5, {"lang": frozenset({"de"})}, excluded=seen)
    assert [store.item_id(int(r)) for r in filtered] == ["i3", "i1"]


def test_rebuild_popularity_applies_new_counts_at_once() -> None:
    store = counted_store()
    assert order(store) == ["a", "b", "c", "d"]
    store.set_popularity_counts("all_time", {"d": 10.0})
    assert order(store) == ["a", "b", "c", "d"]  # within the rebuild interval: the old order
    store.rebuild_popularity()
    assert order(store) == ["d", "a", "b", "c"]
