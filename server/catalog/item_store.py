"""In-memory catalogue of the frontend: what ranking and filtering need about every item, by row.

Rows are dense integers: the FP16 embedding table, popularity, age and attribute codes are arrays indexed
by row, so the request path works on NumPy arrays of rows instead of dictionaries of ids. A deleted item
keeps its row (marked dead) and gets it back if upserted again.
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
    def __init__(self, dim: int, capacity: int = 16_384) -> None:
        self.dim = dim
        self.table = _core.F16Table(dim, capacity)
        self._lock = threading.Lock()
        self._row_of: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        self._ids: list[str] = []
        self._attributes: list[dict[str, str]] = []
        self._labels = _Column(np.uint64, 0, capacity)
        self._alive = _Column(np.bool_, False, capacity)
        self._popularity = _Column(np.float32, 0.0, capacity)
        self._created_at_ms = _Column(np.int64, 0, capacity)
        # attribute name -> value -> code, and attribute name -> per-row code column (-1: not set)
        self._value_codes: dict[str, dict[str, int]] = {}
        self._attr_codes: dict[str, _Column] = {}
        self._popularity_view: _PopularityView | None = None
        self._popularity_view_at = 0.0
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
                if not self._alive.data[row]:
                    self.alive_count += 1
                self._alive.data[row] = True
                meta = metadata[i]
                self._popularity.data[row] = meta.popularity
                self._created_at_ms.data[row] = meta.created_at_ms
                self._set_attributes(row, meta.attributes, size)
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

    # --- reads ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.alive_count

    def row_of(self, item_id: str) -> int | None:
        row = self._row_of.get(item_id)
        return row if row is not None and self._alive.data[row] else None

    def rows_of(self, item_ids: Iterable[str]) -> Rows:
        """Rows of live items; unknown or deleted ids are left out."""
        get = self._row_of.get
        alive = self._alive.data
        found = [r for r in (get(i) for i in item_ids) if r is not None and alive[r]]
        return np.asarray(found, dtype=np.int64)

    def lookup_labels(self, labels: Iterable[int]) -> Rows:
        """Rows aligned with `labels`; -1 where the label is unknown or its item deleted."""
        get = self._row_of_label.get
        alive = self._alive.data
        out = []
        for label in labels:
            row = get(label)
            out.append(row if row is not None and alive[row] else -1)
        return np.asarray(out, dtype=np.int64)

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

    def alive_mask(self, rows: Rows) -> npt.NDArray[np.bool_]:
        return self._alive.data[rows]

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

    def has_attribute(self, name: str) -> bool:
        return name in self._attr_codes

    def popularity_feature(self, rows: Rows) -> npt.NDArray[np.float32]:
        """log1p(popularity / median) scaled to [0, 1] by the most popular item.

        Dividing by the median makes the feature independent of the popularity unit (counts, rates,
        shares): without it a catalogue whose popularity is a share in [0, 1] would get ~0 everywhere.
        """
        view = self._popularity_stats()
        return (np.log1p(self._popularity.data[rows] / view.unit) / view.top).astype(np.float32)

    def _popularity_stats(self) -> _PopularityView:
        """The popularity order and scale, rebuilt at most once a second after writes: rebuilding sorts
        the whole catalogue, which must not land on every request while items stream in. Between
        rebuilds, new items are missing from the order and deleted ones are filtered out by readers."""
        now = time.monotonic()
        view = self._popularity_view
        if view is None or (self._popularity_dirty and now - self._popularity_view_at > _REBUILD_INTERVAL_S):
            with self._lock:
                size = len(self._ids)
                live = np.flatnonzero(self._alive.data[:size])
                popularity = self._popularity.data[live]
                order = live[np.argsort(-popularity, kind="stable")].astype(np.int64)
                self._popularity_dirty = False
            positive = popularity[popularity > 0]
            unit = float(np.median(positive)) if len(positive) else 1.0
            top = float(np.log1p(positive.max() / unit)) if len(positive) else 1.0
            view = self._popularity_view = _PopularityView(order, unit, top or 1.0)
            self._popularity_view_at = now
        return view

    def freshness_feature(self, rows: Rows, now_ms: int, half_life_s: float) -> npt.NDArray[np.float32]:
        age_s = np.maximum(0, now_ms - self._created_at_ms.data[rows]) / 1000.0
        return np.exp2(-age_s / half_life_s).astype(np.float32)

    def popular(self, n: int, allowed: Mapping[str, frozenset[str]] | None = None) -> Rows:
        """The most popular live items (that pass `allowed`), most popular first."""
        ranked = self._popularity_stats().order
        out: list[Rows] = []
        taken = 0
        # Walk the popularity order in chunks so a selective filter does not scan the whole catalogue;
        # the mask also drops items deleted since the order was built.
        for start in range(0, len(ranked), 4096):
            chunk = ranked[start : start + 4096]
            passing = chunk[self.filter_mask(chunk, allowed or {})]
            out.append(passing[: n - taken])
            taken += len(out[-1])
            if taken >= n:
                break
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def vectors(self, rows: Rows) -> npt.NDArray[np.float32]:
        return self.table.get_rows(np.ascontiguousarray(rows, dtype=np.int64))
