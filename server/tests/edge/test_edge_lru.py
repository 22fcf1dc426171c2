"""The edge's in-process level is bounded in bytes and evicts the least recently used entries."""

from __future__ import annotations

import pytest

from server.edge.entry import ENTRY_OVERHEAD_BYTES, Entry, entry_size
from server.edge.lru import ByteLRU


def entry(size: int) -> Entry:
    return Entry(b"x" * size, 10.0, 20.0, 5.0)


def test_bytes_never_exceed_the_bound() -> None:
    lru: ByteLRU[Entry] = ByteLRU(10_000, entry_size)
    for i in range(1000):
        lru.put(f"k{i}", entry(100 + i % 50))
        assert lru.bytes_used <= 10_000
    assert lru.evictions > 0
    assert lru.bytes_used == sum(size for _, size in lru._entries.values())


def test_least_recently_used_goes_first() -> None:
    size = entry_size("k0", entry(100))
    lru: ByteLRU[Entry] = ByteLRU(3 * size, entry_size)
    for key in ("k0", "k1", "k2"):
        lru.put(key, entry(100))
    assert lru.get("k0") is not None  # k1 is now the least recently used
    lru.put("k3", entry(100))
    assert "k1" not in lru and {"k0", "k2", "k3"} <= set(lru._entries)


def test_replacing_a_key_does_not_count_it_twice() -> None:
    lru: ByteLRU[Entry] = ByteLRU(1 << 20, entry_size)
    lru.put("k", entry(100))
    lru.put("k", entry(200))
    assert len(lru) == 1 and lru.bytes_used == entry_size("k", entry(200))
    lru.pop("k")
    assert lru.bytes_used == 0


def test_a_value_larger_than_the_bound_is_not_kept_and_evicts_nothing() -> None:
    lru: ByteLRU[Entry] = ByteLRU(1000, entry_size)
    lru.put("small", entry(10))
    lru.put("huge", entry(5000))
    assert "huge" not in lru and "small" in lru


def test_overhead_is_counted() -> None:
    assert entry_size("k", entry(0)) == 1 + ENTRY_OVERHEAD_BYTES


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ByteLRU(0, entry_size)


def test_entry_round_trips_through_bytes() -> None:
    e = Entry(b"\x00answer", 12.5, 42.25, 2.0)
    assert Entry.decode(e.encode()) == e
    assert Entry.decode(b"short") is None


def test_pop_matching_removes_exactly_the_matching_entries_and_their_bytes() -> None:
    lru: ByteLRU[Entry] = ByteLRU(100_000, entry_size)
    for key in ("a:1", "a:2", "b:1", "ab:1"):
        lru.put(key, entry(100))
    assert lru.pop_matching(lambda key: key.startswith("a:")) == 2
    assert sorted(lru._entries) == ["ab:1", "b:1"]
    assert lru.bytes_used == sum(size for _, size in lru._entries.values())
    assert lru.pop_matching(lambda key: False) == 0
