"""Time-decayed popularity counts: the math both profile stores share, free of I/O.

An interaction of weight w at time t counts w * 2^((T - t) / h) at reference time T, for a list with
half-life h. Computed that way every stored count would have to be rewritten as T moves (a read-modify-
write per item, impossible with CQL counters), so counts use forward decay in epochs instead:

- a list's time axis is cut into epochs of EPOCH_HALF_LIVES half-lives, E = 16 h;
- the interaction goes to epoch e = floor(t / E) with the value w * 2^((t - e E) / h), which lies in
  [w, w * 2^16): values of one epoch only ever grow by addition (a counter increment), never overflow
  and never underflow, however old the timestamps;
- the decayed count at T is sum over e of value_e * 2^((e E - T) / h).

The reference time T is the newest interaction the store holds, not the wall clock: a data set whose
interactions are years old (or a replay of one) keeps its counts and their order, where decaying to the
wall clock would underflow every count to 0.

Only the newest epochs matter: an epoch two before T's epoch holds values < w * 2^16 that are multiplied
by at most 2^-32, so it adds < 2^-16 per unit of weight; older ones far less. Readers therefore read
EPOCHS_READ epochs (T's and the two before it), which leaves an error below 2^-32 per unit of weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

EPOCH_HALF_LIVES = 16
EPOCHS_READ = 3

# CQL counters are integers: a value is stored as round(value * FIXED_POINT_ONE). One increment is below
# w * 2^32 (a value < w * 2^16, scaled by 2^16), so an (item, epoch) counter overflows int64 (2^63) only
# after more than 2^31 unit-weight interactions with ONE item inside ONE epoch; MAX_INCREMENT also caps a
# single absurd weight. The rounding error, 2^-17 of a unit per interaction, is far below any count's use.
FIXED_POINT_ONE = 1 << 16
MAX_INCREMENT = 1 << 52


def epoch_length_ms(half_life_s: float) -> float:
    return EPOCH_HALF_LIVES * half_life_s * 1000.0


def epoch_of(timestamp_ms: float, half_life_s: float) -> int:
    return math.floor(timestamp_ms / epoch_length_ms(half_life_s))


def epoch_value(timestamp_ms: int, weight: float, half_life_s: float) -> tuple[int, float]:
    """(epoch, value) of one interaction: the value lies in [weight, weight * 2^16)."""
    epoch = epoch_of(timestamp_ms, half_life_s)
    offset_ms = timestamp_ms - epoch * epoch_length_ms(half_life_s)
    return epoch, weight * 2.0 ** (offset_ms / (half_life_s * 1000.0))


def decayed(epoch: int, value: float, reference_ms: float, half_life_s: float) -> float:
    """An epoch's value decayed to the reference time."""
    exponent = (epoch * epoch_length_ms(half_life_s) - reference_ms) / (half_life_s * 1000.0)
    # Far below 2^-1074 is 0; a far-future epoch (only with a reference older than the data) is capped.
    return value * 2.0 ** min(max(exponent, -1100.0), 1000.0)


def epochs_to_read(reference_ms: float, half_life_s: float) -> range:
    newest = epoch_of(reference_ms, half_life_s)
    return range(newest - EPOCHS_READ + 1, newest + 1)


def to_fixed(value: float) -> int:
    return min(round(value * FIXED_POINT_ONE), MAX_INCREMENT)


def from_fixed(counter: int) -> float:
    return counter / FIXED_POINT_ONE


class DecayedCounts:
    """One list's counts in memory: per item, its newest epoch and its value relative to that epoch.

    Adding an interaction of a newer epoch rebases the item's value onto it (multiplying by 2^-16 per
    epoch), so one number per item suffices and nothing is ever rewritten for items nobody touches.
    Items are rows of NumPy arrays, so decaying every count for a reader is one vectorised pass.
    """

    def __init__(self, half_life_s: float) -> None:
        if not half_life_s > 0:
            raise ValueError(f"a half-life must be > 0 seconds, got {half_life_s}")
        self.half_life_s = half_life_s
        self._row_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._epochs = np.zeros(1024, dtype=np.int64)
        self._values = np.zeros(1024, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_ids: Sequence[str], timestamps_ms: Sequence[int], weights: Sequence[float]) -> None:
        """Adds one interaction per (item id, timestamp, weight)."""
        epochs, values = epoch_values(
            np.asarray(timestamps_ms, dtype=np.int64), np.asarray(weights, dtype=np.float64), self.half_life_s
        )
        self.add_values(item_ids, epochs, values)

    def add_values(
        self, item_ids: Sequence[str], epochs: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
    ) -> None:
        """Adds values counted from the start of their epochs (also how a snapshot is loaded back)."""
        if not len(item_ids):
            return
        rows = self._rows(item_ids)
        distinct, which = np.unique(rows, return_inverse=True)
        # Each touched item moves to the newest epoch among what it holds and what arrives.
        newest = np.full(len(distinct), _NO_EPOCH, dtype=np.int64)
        np.maximum.at(newest, which, epochs)
        held = self._epochs[distinct]
        target = np.maximum(held, newest)
        self._values[distinct] *= np.exp2(EPOCH_HALF_LIVES * (held - target).astype(np.float64))
        added = values * np.exp2(EPOCH_HALF_LIVES * (epochs - target[which]).astype(np.float64))
        np.add.at(self._values, rows, added)
        self._epochs[distinct] = target

    def _rows(self, item_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        row_of = self._row_of
        rows = np.empty(len(item_ids), dtype=np.int64)
        for k, item_id in enumerate(item_ids):
            row = row_of.get(item_id)
            if row is None:
                row = row_of[item_id] = len(self._ids)
                self._ids.append(item_id)
            rows[k] = row
        if len(self._ids) > len(self._epochs):
            size = max(len(self._ids), 2 * len(self._epochs))
            self._epochs = np.concatenate([self._epochs, np.full(size - len(self._epochs), _NO_EPOCH)])
            self._values = np.concatenate([self._values, np.zeros(size - len(self._values))])
        return rows

    def decayed(self, reference_ms: float) -> dict[str, float]:
        """item id -> count decayed to the reference time (items decayed to exactly 0 left out)."""
        n = len(self._ids)
        exponent = (self._epochs[:n] * epoch_length_ms(self.half_life_s) - reference_ms) / (
            self.half_life_s * 1000.0
        )
        counts = self._values[:n] * np.exp2(np.clip(exponent, -1100.0, 1000.0))
        kept = np.flatnonzero(counts > 0)
        if len(kept) == n:
            # Only the first n ids: this runs on a worker thread while writes may append more.
            return dict(zip(self._ids[:n], counts.tolist(), strict=True))
        ids = self._ids
        return {ids[row]: count for row, count in zip(kept.tolist(), counts[kept].tolist(), strict=True)}

    def snapshot(self) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Copies of (item ids, epochs, values), aligned: what `add_values` takes back."""
        n = len(self._ids)
        return list(self._ids), self._epochs[:n].copy(), self._values[:n].copy()


# The epoch of a row no interaction reached yet: far below any real one, and safe to subtract from.
_NO_EPOCH = -(2**62)


def epoch_values(
    timestamps_ms: npt.NDArray[np.int64], weights: npt.NDArray[np.float64], half_life_s: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """`epoch_value` of many interactions at once."""
    length = epoch_length_ms(half_life_s)
    epochs = np.floor(timestamps_ms / length).astype(np.int64)
    offsets_ms = timestamps_ms - epochs * length
    return epochs, weights * np.exp2(offsets_ms / (half_life_s * 1000.0))


def combine(
    epoch_values: Mapping[int, Mapping[str, float]], reference_ms: float, half_life_s: float
) -> dict[str, float]:
    """Counts at the reference time from per-epoch values (epoch -> item id -> value)."""
    counts: dict[str, float] = {}
    for epoch, values in epoch_values.items():
        for item_id, value in values.items():
            counts[item_id] = counts.get(item_id, 0.0) + decayed(epoch, value, reference_ms, half_life_s)
    return {item_id: count for item_id, count in counts.items() if count > 0}
