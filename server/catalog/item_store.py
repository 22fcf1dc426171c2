"""In-memory catalogue of the frontend: what ranking and filtering need about every item, by row.

Rows are dense integers: the FP16 embedding table, popularity, age and attribute codes are arrays indexed
by row, so the request path works on NumPy arrays of rows instead of dictionaries of ids. A deleted item
keeps its row (marked dead) and gets it back if upserted again.

Popularity has two parts: the caller-supplied `ItemRecord.popularity` (the prior) and the time-decayed
interaction counts of each named list (`popularity.lists`, pushed in by server/catalog/popularity_sync.py).
An item's popularity in list L is prior_weight x prior + count_L.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from server import _core
from server.catalog.payload import ItemMetadata
from shards.records import is_excluded

Rows = npt.NDArray[np.int64]
EmbeddingListener = Callable[[Rows, npt.NDArray[np.float32] | None], None]

_MISSING = -1
_REBUILD_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class _PopularityView:
    order: Rows  # live rows, most popular first
    unit: float  # median positive popularity
    top: float  # log1p(max popularity / unit)


class _Column:
    """A growable NumPy column indexed by row."""

    def __init__(self, dtype: type, fill: float | int | bool, capacity: int) -> None:
        self.fill = fill
        self.data: npt.NDArray[Any] = np.full(capacity, fill, dtype=dtype)

    def ensure(self, size: int) -> None:
        if size > len(self.data):
            grown = np.full(max(size, 2 * len(self.data)), self.fill, dtype=self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown


class ItemStore:
    def __init__(
        self,
        dim: int,
        capacity: int = 16_384,
        *,
        prior_weight: float = 1.0,
        popular_list: str = "all_time",
        feature_list: str = "all_time",
    ) -> None:
        self.dim = dim
        self.prior_weight = prior_weight
        self.popular_list = popular_list
        self.feature_list = feature_list
        self.table = _core.F16Table(dim, capacity)
        self._lock = threading.Lock()
        self._row_of: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        # (labels sorted, their rows, catalogue size when built): lookup_labels without a dictionary.
        self._sorted_labels: tuple[npt.NDArray[np.uint64], Rows, int] = (
            np.empty(0, np.uint64),
            np.empty(0, np.int64),
            0,
        )
        self._ids: list[str] = []
        self._attributes: list[dict[str, str]] = []
        self._labels = _Column(np.uint64, 0, capacity)
        self._alive = _Column(np.bool_, False, capacity)
        self._popularity = _Column(np.float32, 0.0, capacity)
        self._created_at_ms = _Column(np.int64, 0, capacity)
        # attribute name -> value -> code, and attribute name -> per-row code column (-1: not set)
        self._value_codes: dict[str, dict[str, int]] = {}
        self._attr_codes: dict[str, _Column] = {}
        # attribute name -> value -> live items holding it: a filter's match count without a scan
        self._value_counts: dict[str, dict[str, int]] = {}
        # list name -> decayed interaction count per row; replaced whole by set_popularity_counts, and
        # shorter than the catalogue when items arrived since (their count is 0 until the next refresh).
        self._counts: dict[str, npt.NDArray[np.float32]] = {}
        # Per list: the popularity order and scale, when it was built, and lists whose view is stale.
        self._popularity_views: dict[str, _PopularityView] = {}
        self._popularity_view_at: dict[str, float] = {}
        self._stale_lists: set[str] = set()
        # Set by catalogue writes: every list's view is stale.
        self._popularity_dirty = False
        self._listeners: list[EmbeddingListener] = []
        self.alive_count = 0

    # --- writes ---------------------------------------------------------------------------------------
    def add_listener(self, listener: EmbeddingListener) -> None:
        """`listener(rows, vectors)` after upserts, `(rows, None)` after deletes (e.g. a GPU mirror)."""
        self._listeners.append(listener)

    def upsert(
        self,
        item_ids: Sequence[str],
        labels: npt.NDArray[np.uint64],
        vectors: npt.NDArray[np.float32],
        metadata: Sequence[ItemMetadata],
    ) -> Rows:
        with self._lock:
            rows = np.empty(len(item_ids), dtype=np.int64)
            for i, item_id in enumerate(item_ids):
                row = self._row_of.get(item_id)
                if row is None:
                    row = len(self._ids)
                    self._ids.append(item_id)
                    self._attributes.append({})
                    self._row_of[item_id] = row
                rows[i] = row
            size = len(self._ids)
            for column in (self._labels, self._alive, self._popularity, self._created_at_ms):
                column.ensure(size)
            for column in self._attr_codes.values():
                column.ensure(size)
            self.table.set_rows(rows, np.ascontiguousarray(vectors, dtype=np.float32))
            for i, row in enumerate(rows.tolist()):
                label = int(labels[i])
                self._labels.data[row] = label
                self._row_of_label[label] = row
                if self._alive.data[row]:
                    self._count_values(row, -1)
                else:
                    self.alive_count += 1
                self._alive.data[row] = True
                meta = metadata[i]
                self._popularity.data[row] = meta.popularity
                self._created_at_ms.data[row] = meta.created_at_ms
                self._set_attributes(row, meta.attributes, size)
                self._count_values(row, 1)
            self._popularity_dirty = True
        for listener in self._listeners:
            listener(rows, vectors)
        return rows

    def delete(self, item_ids: Iterable[str]) -> Rows:
        with self._lock:
            deleted = []
            for item_id in item_ids:
                row = self._row_of.get(item_id)
                if row is not None and self._alive.data[row]:
                    self._alive.data[row] = False
                    self.alive_count -= 1
                    self._count_values(row, -1)
                    deleted.append(row)
            self._popularity_dirty = True
        rows = np.asarray(deleted, dtype=np.int64)
        if len(rows):
            for listener in self._listeners:
                listener(rows, None)
        return rows

    def _set_attributes(self, row: int, attributes: Mapping[str, str], size: int) -> None:
        for name in self._attributes[row]:
            self._attr_codes[name].data[row] = _MISSING
        self._attributes[row] = dict(attributes)
        for name, value in attributes.items():
            codes = self._value_codes.setdefault(name, {})
            column = self._attr_codes.get(name)
            if column is None:
                column = self._attr_codes[name] = _Column(np.int32, _MISSING, len(self._labels.data))
            column.ensure(size)
            column.data[row] = codes.setdefault(value, len(codes))

    def _count_values(self, row: int, delta: int) -> None:
        for name, value in self._attributes[row].items():
            counts = self._value_counts.setdefault(name, {})
            counts[value] = counts.get(value, 0) + delta

    # --- reads ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.alive_count

    def row_of(self, item_id: str) -> int | None:
        row = self._row_of.get(item_id)
        return row if row is not None and self._alive.data[row] else None

    def rows_of(self, item_ids: Iterable[str]) -> Rows:
        """Rows of live items; unknown or deleted ids are left out."""
        rows = self.rows_or_missing(item_ids if isinstance(item_ids, list | tuple) else list(item_ids))
        return rows[rows >= 0]

    def rows_or_missing(self, item_ids: Sequence[str]) -> Rows:
        """Rows aligned with `item_ids`; -1 where the id is unknown or its item deleted. Through the ids'
        labels (hashed natively, then found by binary search): half the cost of a dictionary lookup each."""
        return self.lookup_labels(_core.stable_hash64(item_ids)) if item_ids else np.empty(0, np.int64)

    def lookup_labels(self, labels: npt.NDArray[np.uint64] | Iterable[int]) -> Rows:
        """Rows aligned with `labels`; -1 where the label is unknown or its item deleted. Vectorised: a
        binary search in a sorted copy of the labels, and the dictionary only for items newer than it."""
        wanted = np.asarray(labels if isinstance(labels, np.ndarray) else list(labels), dtype=np.uint64)
        sorted_labels, sorted_rows = self._label_index()
        rows = np.full(len(wanted), _MISSING, dtype=np.int64)
        if len(sorted_labels):
            at = np.minimum(np.searchsorted(sorted_labels, wanted), len(sorted_labels) - 1)
            hit = sorted_labels[at] == wanted
            rows[hit] = sorted_rows[at[hit]]
        else:
            hit = np.zeros(len(wanted), dtype=np.bool_)
        if not hit.all():
            get = self._row_of_label.get
            for i in np.flatnonzero(~hit).tolist():
                rows[i] = get(int(wanted[i]), _MISSING)
        found = rows >= 0
        rows[found & ~self._alive.data[np.maximum(rows, 0)]] = _MISSING
        return rows

    def _label_index(self) -> tuple[npt.NDArray[np.uint64], Rows]:
        """Labels sorted, with their rows; rebuilt once enough items arrived since that the dictionary
        fallback for the newer ones would cost more than the sort (a row's label never changes)."""
        index = self._sorted_labels
        size = len(self._ids)
        if size - index[2] > max(1024, index[2] // 8):
            with self._lock:
                size = len(self._ids)
                labels = self._labels.data[:size].copy()
            order = np.argsort(labels, kind="stable").astype(np.int64)
            index = self._sorted_labels = (labels[order], order, size)
        return index[0], index[1]

    def labels(self, rows: Rows) -> npt.NDArray[np.uint64]:
        """The shard labels (stable item hashes) of `rows`."""
        return self._labels.data[rows]

    def sample_ids(self, n: int, seed: int = 0) -> list[str]:
        """Up to `n` live item ids, spread over the catalogue (deterministic for a given seed)."""
        live = np.flatnonzero(self._alive.data[: len(self._ids)])
        if len(live) == 0:
            return []
        picked = np.random.default_rng(seed).choice(live, size=min(n, len(live)), replace=False)
        return [self._ids[int(row)] for row in picked]

    def label_owner(self, label: int) -> str | None:
        row = self._row_of_label.get(label)
        return None if row is None else self._ids[row]

    def item_id(self, row: int) -> str:
        return self._ids[row]

    def metadata(self, row: int) -> ItemMetadata:
        return ItemMetadata(
            attributes=dict(self._attributes[row]),
            popularity=float(self._popularity.data[row]),
            created_at_ms=int(self._created_at_ms.data[row]),
        )

    def label_column(self) -> npt.NDArray[np.uint64]:
        """Every row's label (0 past the last row), for native code that looks labels up by row."""
        return self._labels.data

    def alive_column(self) -> npt.NDArray[np.bool_]:
        """Whether each row's item is live (False past the last row)."""
        return self._alive.data

    def filter_mask(self, rows: Rows, allowed: Mapping[str, frozenset[str]]) -> npt.NDArray[np.bool_]:
        """True where the item has, for every filtered attribute, one of the allowed values."""
        mask = self._alive.data[rows].copy()
        for name, values in allowed.items():
            column = self._attr_codes.get(name)
            codes = self._value_codes.get(name, {})
            wanted = np.asarray([codes[v] for v in values if v in codes], dtype=np.int32)
            if column is None or len(wanted) == 0:
                return np.zeros(len(rows), dtype=np.bool_)
            mask &= np.isin(column.data[rows], wanted)
        return mask

    def estimate_matches(self, allowed: Mapping[str, frozenset[str]]) -> int:
        """About how many live items pass `allowed`, from per-value counts (no scan): exact for one
        attribute; for several, the attributes are taken as independent."""
        estimate = float(self.alive_count)
        for name, values in allowed.items():
            counts = self._value_counts.get(name, {})
            matching = sum(counts.get(v, 0) for v in values)
            estimate *= matching / max(1, self.alive_count)
        return round(estimate)

    def matching_rows(self, allowed: Mapping[str, frozenset[str]]) -> Rows:
        """Every live row that passes `allowed`, ascending (a scan of the attribute columns)."""
        with self._lock:  # a writer grows the id list before the columns
            rows = np.arange(len(self._ids), dtype=np.int64)
            return rows[self.filter_mask(rows, allowed)]

    def has_attribute(self, name: str) -> bool:
        return name in self._attr_codes

    def attribute_name_count(self) -> int:
        """Distinct attribute names held (each has a code column as long as the catalogue)."""
        return len(self._attr_codes)

    def set_popularity_counts(self, list_name: str, counts: Mapping[str, float]) -> None:
        """Replaces list `list_name`'s decayed interaction counts (absolute values, so a repeated refresh
        never counts twice); ids not in the catalogue are ignored. The list's order follows within
        the rebuild interval."""
        get = self._row_of.get
        rows = np.fromiter((get(item_id, -1) for item_id in counts), dtype=np.int64, count=len(counts))
        values = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        known = rows >= 0
        with self._lock:
            column = np.zeros(len(self._ids), dtype=np.float32)
            column[rows[known]] = values[known]
            # Replaced, never written in place: a reader sees the old counts or the new ones.
            self._counts[list_name] = column
            self._stale_lists.add(list_name)

    def popularity(self, rows: Rows, list_name: str | None = None) -> npt.NDArray[np.float32]:
        """Effective popularity of `rows` in a list (default: popular_list): prior_weight x the
        caller-supplied popularity + the list's decayed interaction count."""
        effective = self._popularity.data[rows] * np.float32(self.prior_weight)
        counts = self._counts.get(list_name or self.popular_list)
        if counts is not None and len(rows):
            inside = rows < len(counts)
            effective[inside] += counts[rows[inside]]
        return effective

    def popularity_feature(self, rows: Rows) -> npt.NDArray[np.float32]:
        """log1p(popularity / median) scaled to [0, 1] by the most popular item, in the feature list.

        Dividing by the median makes the feature independent of the popularity unit (counts, rates,
        shares): without it a catalogue whose popularity is a share in [0, 1] would get ~0 everywhere.
        """
        view = self._popularity_stats(self.feature_list)
        return (np.log1p(self.popularity(rows, self.feature_list) / view.unit) / view.top).astype(np.float32)

    def rebuild_popularity(self) -> None:
        """Rebuilds every list's order and scale now, not at the first read past the rebuild interval:
        after a bulk load or a refresh of the counts, so the answers that follow all see the same order
        and no request pays for the sort."""
        with self._lock:
            names = {self.popular_list, self.feature_list, *self._counts, *self._popularity_views}
            self._stale_lists.update(names)
            for name in names:
                self._popularity_view_at[name] = -float("inf")
        for name in names:
            self._popularity_stats(name)

    def _popularity_stats(self, list_name: str) -> _PopularityView:
        """A list's popularity order and scale, rebuilt at most once a second after writes: rebuilding
        sorts the whole catalogue, which must not land on every request while items stream in. Between
        rebuilds, new items are missing from the order and deleted ones are filtered out by readers."""
        now = time.monotonic()
        view = self._popularity_views.get(list_name)
        if self._popularity_dirty:
            with self._lock:
                # A catalogue write makes every list's view stale, rebuilt when that list is next read.
                self._stale_lists.update(self._popularity_views)
                self._popularity_dirty = False
        stale = list_name in self._stale_lists
        built_at = self._popularity_view_at.get(list_name, 0.0)
        if view is None or (stale and now - built_at > _REBUILD_INTERVAL_S):
            with self._lock:
                size = len(self._ids)
                live = np.flatnonzero(self._alive.data[:size])
                self._stale_lists.discard(list_name)
            popularity = self.popularity(live, list_name)
            order = live[np.argsort(-popularity, kind="stable")].astype(np.int64)
            positive = popularity[popularity > 0]
            unit = float(np.median(positive)) if len(positive) else 1.0
            top = float(np.log1p(positive.max() / unit)) if len(positive) else 1.0
            view = _PopularityView(order, unit, top or 1.0)
            with self._lock:
                self._popularity_views[list_name] = view
                self._popularity_view_at[list_name] = now
        return view

    def freshness_feature(self, rows: Rows, now_ms: int, half_life_s: float) -> npt.NDArray[np.float32]:
        age_s = np.maximum(0, now_ms - self._created_at_ms.data[rows]) / 1000.0
        return np.exp2(-age_s / half_life_s).astype(np.float32)

    def popular(
        self,
        n: int,
        allowed: Mapping[str, frozenset[str]] | None = None,
        list_name: str | None = None,
        excluded: npt.NDArray[np.uint64] | None = None,
    ) -> Rows:
        """The most popular live items (that pass `allowed` and whose label is not in the sorted
        `excluded`) in a list (default: popular_list), most popular first."""
        ranked = self._popularity_stats(list_name or self.popular_list).order
        out: list[Rows] = []
        taken = 0
        # Walk the popularity order in chunks so a selective filter does not scan the whole catalogue;
        # the mask also drops items deleted since the order was built.
        for start in range(0, len(ranked), 4096):
            chunk = ranked[start : start + 4096]
            mask = self.filter_mask(chunk, allowed or {})
            if excluded is not None and len(excluded):
                # A heavy user has often seen the head of the list: skip it here, not after the cut.
                mask &= ~is_excluded(self._labels.data[chunk], excluded)
            passing = chunk[mask]
            out.append(passing[: n - taken])
            taken += len(out[-1])
            if taken >= n:
                break
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def vectors(self, rows: Rows) -> npt.NDArray[np.float32]:
        return self.table.get_rows(np.ascontiguousarray(rows, dtype=np.int64))
