"""The attributes of one shard's items, dictionary-encoded, for filtering search hits in NumPy.

Labels get dense slots; a deleted label's slot is freed and given to the next new label, so a shard
under steady upserts and deletes keeps a table the size of its live items. A sorted copy of the
label -> slot map maps a batch of hit labels with one `np.searchsorted`; per attribute, a value -> code
dictionary, a code column by slot (-1: not set) and the number of live items holding each code, from
which a filter's selectivity is estimated before searching.

Not thread-safe: the shard mutates it under its write lock and reads it under its read lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from shards.payload import attributes_of
from shards.records import AttributeFilter

_MISSING = -1


@dataclass(eq=False)
class CompiledFilter:
    """An AttributeFilter against one shard's codes, valid while the shard's read lock is held."""

    # (code column by slot, allowed[code + 1]) per attribute; empty with `nothing`.
    parts: list[tuple[NDArray[np.int32], NDArray[np.bool_]]]
    # Live items matching, counted exactly for one attribute, else bounded by the rarest attribute.
    bound: int
    # Estimated share of live items matching (attributes taken as independent).
    selectivity: float
    exact: bool
    _table: AttributeTable | None = field(default=None, repr=False)

    def matches(self, slots: NDArray[np.int64]) -> NDArray[np.bool_]:
        """True where the slot's item passes; slot -1 (unknown label) never does."""
        mask = slots >= 0
        if not self.parts:
            return np.zeros(slots.shape, dtype=np.bool_)
        safe = np.maximum(slots, 0)
        for column, allowed in self.parts:
            mask &= allowed[column[safe] + 1]
        return mask

    def count(self) -> int:
        """Live items matching, exactly (a scan of the shard's codes when several attributes are set)."""
        if not self.exact and self._table is not None:
            self.bound = int(self.matches(self._table.live_slots()).sum())
            self.exact = True
        return self.bound


class AttributeTable:
    def __init__(self) -> None:
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []  # slots of removed labels, reused first
        self._high = 0  # 1 + the highest slot ever given
        self._keys = np.zeros(0, dtype=np.uint64)  # labels, sorted
        self._key_slots = np.zeros(0, dtype=np.int64)  # slot of each key
        self._live = np.zeros(1024, dtype=np.bool_)
        self.live_count = 0
        self._value_codes: dict[str, dict[str, int]] = {}
        self._columns: dict[str, NDArray[np.int32]] = {}
        self._counts: dict[str, NDArray[np.int64]] = {}

    # ------------------------------------------------------------------ writes
    def set(self, labels: Sequence[int], payloads: Sequence[bytes]) -> None:
        """Inserts or replaces the items' attributes (decoded from their payloads)."""
        new: list[tuple[int, int]] = []
        for label, payload in zip(labels, payloads, strict=True):
            slot = self._slot_of.get(label)
            if slot is None:
                if self._free:
                    slot = self._free.pop()
                else:
                    slot = self._high
                    self._high += 1
                self._slot_of[label] = slot
                new.append((label, slot))
                self._ensure(slot + 1)
            elif self._live[slot]:
                self._forget(slot)
            self._live[slot] = True
            self.live_count += 1
            for name, value in attributes_of(payload).items():
                self._set_code(slot, name, value)
        if new:
            new.sort()
            labels_new = np.array([label for label, _ in new], dtype=np.uint64)
            slots_new = np.array([slot for _, slot in new], dtype=np.int64)
            at = np.searchsorted(self._keys, labels_new)
            self._keys = np.insert(self._keys, at, labels_new)
            self._key_slots = np.insert(self._key_slots, at, slots_new)

    def remove(self, labels: Sequence[int]) -> None:
        gone = []
        for label in labels:
            slot = self._slot_of.get(label)
            if slot is None:
                continue
            if self._live[slot]:
                self._forget(slot)
            del self._slot_of[label]
            self._free.append(slot)
            gone.append(label)
        if gone:
            at = np.searchsorted(self._keys, np.array(gone, dtype=np.uint64))
            self._keys = np.delete(self._keys, at)
            self._key_slots = np.delete(self._key_slots, at)

    @property
    def slot_capacity(self) -> int:
        """Slots allocated (live ones and free ones): bounded by the most items held at once."""
        return self._high

    def _forget(self, slot: int) -> None:
        """Takes a live slot out of the counts, clears its codes and marks it dead."""
        for name, column in self._columns.items():
            code = column[slot]
            if code != _MISSING:
                self._counts[name][code] -= 1
                column[slot] = _MISSING
        self._live[slot] = False
        self.live_count -= 1

    def _set_code(self, slot: int, name: str, value: str) -> None:
        codes = self._value_codes.setdefault(name, {})
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(codes)
            counts = self._counts.get(name)
            if counts is None or code >= len(counts):
                grown = np.zeros(max(16, 2 * code + 1), dtype=np.int64)
                if counts is not None:
                    grown[: len(counts)] = counts
                self._counts[name] = grown
        column = self._columns.get(name)
        if column is None:
            column = self._columns[name] = np.full(len(self._live), _MISSING, dtype=np.int32)
        column[slot] = code
        self._counts[name][code] += 1

    def _ensure(self, size: int) -> None:
        if size <= len(self._live):
            return
        capacity = max(size, 2 * len(self._live))
        live = np.zeros(capacity, dtype=np.bool_)
        live[: len(self._live)] = self._live
        self._live = live
        for name, column in self._columns.items():
            grown = np.full(capacity, _MISSING, dtype=np.int32)
            grown[: len(column)] = column
            self._columns[name] = grown
        # Slots of an attribute first seen later start as "not set" (np.full above) by construction.

    # ------------------------------------------------------------------ reads
    def slots_of(self, labels: NDArray[np.uint64]) -> NDArray[np.int64]:
        """The slot of each label (any shape); -1 for labels never written here."""
        if not len(self._keys):
            return np.full(labels.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._keys, labels), len(self._keys) - 1)
        return np.where(self._keys[at] == labels, self._key_slots[at], -1)

    def count_held(self, labels: NDArray[np.uint64]) -> int:
        """How many of `labels` are live items here: what a query excluding them must over-fetch by."""
        slots = self.slots_of(labels)
        slots = slots[slots >= 0]
        return int(np.count_nonzero(self._live[slots]))

    def live_slots(self) -> NDArray[np.int64]:
        return np.flatnonzero(self._live[: self._high]).astype(np.int64)

    def compile(self, wanted: AttributeFilter) -> CompiledFilter:
        live = self.live_count
        parts: list[tuple[NDArray[np.int32], NDArray[np.bool_]]] = []
        bound = live
        selectivity = 1.0
        for name, values in wanted.terms:
            codes = self._value_codes.get(name, {})
            hit = [codes[v] for v in values if v in codes]
            if not hit or live == 0:
                return CompiledFilter([], 0, 0.0, True)
            allowed = np.zeros(len(codes) + 1, dtype=np.bool_)
            allowed[np.asarray(hit) + 1] = True
            matching = int(self._counts[name][hit].sum())
            if matching == 0:
                return CompiledFilter([], 0, 0.0, True)
            parts.append((self._columns[name], allowed))
            bound = min(bound, matching)
            selectivity *= matching / live
        return CompiledFilter(parts, bound, selectivity, len(parts) <= 1, self)

    def value_counts(self, name: str) -> dict[str, int]:
        """Live items per value of one attribute (tests, diagnostics)."""
        counts = self._counts.get(name)
        codes = self._value_codes.get(name, {})
        return {v: int(counts[c]) for v, c in codes.items() if counts is not None and counts[c] > 0}
