from __future__ import annotations

import math

import numpy as np
import pytest

from server import popularity
from server.popularity import DecayedCounts

H = 3600.0  # half-life (s) of the lists under test
H_MS = H * 1000
E_MS = popularity.EPOCH_HALF_LIVES * H_MS


def exact(events: list[tuple[int, float]], reference_ms: float) -> float:
    return sum(w * 2 ** ((t - reference_ms) / H_MS) for t, w in events)


@pytest.mark.parametrize(
    ("timestamp_ms", "epoch"),
    [(0, 0), (int(E_MS) - 1, 0), (int(E_MS), 1), (883_612_800_000, 15_340), (1_750_000_000_000, 30_381)],
)
def test_an_interaction_goes_to_its_epoch_with_a_value_in_range(timestamp_ms: int, epoch: int) -> None:
    got_epoch, value = popularity.epoch_value(timestamp_ms, 2.0, H)
    assert got_epoch == epoch == math.floor(timestamp_ms / E_MS)
    assert 2.0 <= value < 2.0 * 2**16
    assert value == pytest.approx(2.0 * 2 ** ((timestamp_ms - epoch * E_MS) / H_MS))


@pytest.mark.parametrize(
    "events",
    [
        [(0, 1.0), (int(H_MS), 1.0)],  # one half-life apart
        [(1_000, 2.0), (int(3 * E_MS) + 7, 1.0), (int(2 * E_MS), 5.0)],  # several epochs, out of order
        [(883_612_800_000, 1.0), (883_612_800_000 + int(H_MS / 2), 3.0)],  # 1998
        [(1_750_000_000_000 - int(40 * H_MS), 1.0), (1_750_000_000_000, 0.5)],  # today
    ],
)
def test_forward_decay_equals_the_direct_formula(events: list[tuple[int, float]]) -> None:
    counts = DecayedCounts(H)
    for t, w in events:
        counts.add(["x"], [t], [w])
    newest = max(t for t, _ in events)
    for reference in (newest, newest + H_MS, newest + 3 * E_MS):
        assert counts.decayed(reference)["x"] == pytest.approx(exact(events, reference), rel=1e-12)


def test_two_interactions_one_half_life_apart_the_older_weighs_half() -> None:
    counts = DecayedCounts(H)
    counts.add(["old"], [1_000_000], [1.0])
    counts.add(["new"], [1_000_000 + int(H_MS)], [1.0])
    assert counts.decayed(1_000_000 + H_MS) == pytest.approx({"old": 0.5, "new": 1.0})


def test_epoch_values_combine_like_the_accumulator() -> None:
    """The CQL store's path (per-epoch sums, fixed point) agrees with the in-memory accumulator."""
    events = [
        ("a", 0, 1.0),
        ("a", int(E_MS) + 5, 2.0),
        ("b", int(2.5 * E_MS), 1.0),
        ("a", int(2.5 * E_MS), 1.0),
    ]
    counts = DecayedCounts(H)
    per_epoch: dict[int, dict[str, float]] = {}
    for item, t, w in events:
        counts.add([item], [t], [w])
        epoch, value = popularity.epoch_value(t, w, H)
        stored = popularity.from_fixed(popularity.to_fixed(value))
        per_epoch.setdefault(epoch, {}).setdefault(item, 0.0)
        per_epoch[epoch][item] += stored
    reference = int(2.5 * E_MS)
    combined = popularity.combine(per_epoch, reference, H)
    expected = counts.decayed(reference)
    assert combined.keys() == expected.keys()
    for item, count in expected.items():
        assert combined[item] == pytest.approx(count, rel=1e-4)


def test_only_the_newest_epochs_are_read_and_older_ones_are_negligible() -> None:
    reference = 10 * E_MS + 123
    assert list(popularity.epochs_to_read(reference, H)) == [8, 9, 10]
    # The largest value an epoch before those can hold, decayed to the reference: below 2^-32.
    oldest_unread = 7
    assert popularity.decayed(oldest_unread, 2.0**16, reference, H) < 2.0**-32


def test_decay_never_overflows_or_raises() -> None:
    assert popularity.decayed(0, 1.0, 1e18, H) == 0.0
    assert math.isfinite(popularity.decayed(10**9, 1.0, 0.0, H))
    counts = DecayedCounts(H)
    counts.add(["x"], [10**15], [1.0])
    counts.add(["x"], [0], [1.0])  # epochs apart by far more than a float's range
    assert counts.decayed(10**15) == {"x": pytest.approx(1.0)}


def test_fixed_point_round_trips_and_caps_absurd_weights() -> None:
    assert popularity.from_fixed(popularity.to_fixed(1.5)) == 1.5
    assert abs(popularity.from_fixed(popularity.to_fixed(1 / 3)) - 1 / 3) <= 2**-17
    assert popularity.to_fixed(1e300) == popularity.MAX_INCREMENT
    # The largest single increment leaves room for 2^31 of them in an int64 counter.
    assert popularity.to_fixed(2.0**16) * 2**31 <= 2**63


def test_a_batch_equals_its_interactions_one_by_one() -> None:
    """Repeated items in one batch, in any time order, across epochs: as if added one at a time."""
    rng = np.random.default_rng(5)
    items = [f"i{k}" for k in rng.integers(0, 5, 200)]
    times = rng.integers(0, int(6 * E_MS), 200).tolist()
    weights = rng.uniform(0.5, 3.0, 200).tolist()
    batch, single = DecayedCounts(H), DecayedCounts(H)
    batch.add(items, times, weights)
    for item, t, w in zip(items, times, weights, strict=True):
        single.add([item], [t], [w])
    reference = max(times)
    expected = {
        item: exact([(t, w) for i, t, w in zip(items, times, weights, strict=True) if i == item], reference)
        for item in set(items)
    }
    assert batch.decayed(reference) == pytest.approx(expected, rel=1e-9)
    assert single.decayed(reference) == pytest.approx(expected, rel=1e-9)


def test_a_snapshot_loads_back_into_an_equal_accumulator() -> None:
    counts = DecayedCounts(H)
    for k in range(3000):  # grows its arrays past their first capacity
        counts.add([f"i{k % 1500}"], [k * int(E_MS // 300)], [1.0 + k % 7])
    twin = DecayedCounts(H)
    twin.add_values(*counts.snapshot())
    assert len(twin) == len(counts) == 1500
    assert twin.decayed(11 * E_MS) == counts.decayed(11 * E_MS)


def test_a_non_positive_half_life_is_refused() -> None:
    with pytest.raises(ValueError, match="half-life"):
        DecayedCounts(0.0)
