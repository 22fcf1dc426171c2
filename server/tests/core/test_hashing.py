"""server._core.stable_hash64: the item label (xxh3_64, seed 0, of the id's UTF-8 bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import NO_ITEM, stable_hash64

# "" is XXH3_64bits' published test vector; "item-42" is pinned in core_rs/src/hashing.rs too.
KNOWN = [
    ("", 0x2D06800538D394C2),
    ("item-42", 7_315_637_684_426_602_276),
]


@pytest.mark.parametrize(("item_id", "label"), KNOWN)
def test_known_values(item_id: str, label: int) -> None:
    out = stable_hash64([item_id])
    assert out.dtype == np.uint64
    assert out.shape == (1,)
    assert int(out[0]) == label


@pytest.mark.parametrize(
    "ids",
    [
        [],
        ["a"],
        ["item-1", "item-2", "item-1"],
        ["é", "日本", "🙂", "x" * 1000],
        [f"item-{i}" for i in range(20_000)],  # large enough for the parallel path
    ],
)
def test_deterministic_and_never_no_item(ids: list[str]) -> None:
    first = stable_hash64(ids)
    assert first.shape == (len(ids),)
    np.testing.assert_array_equal(first, stable_hash64(list(ids)))
    assert not (first == NO_ITEM).any()
    # Same id, same label; one at a time equals batched.
    for i in range(0, len(ids), max(1, len(ids) // 7)):
        assert stable_hash64([ids[i]])[0] == first[i]


def test_accepts_any_sequence_of_str() -> None:
    ids = ["a", "b", "c"]
    want = stable_hash64(ids)
    np.testing.assert_array_equal(stable_hash64(tuple(ids)), want)
    np.testing.assert_array_equal(stable_hash64(np.array(ids)), want)
    np.testing.assert_array_equal(stable_hash64(iter(ids)), want)


def test_utf8_bytes_are_hashed() -> None:
    a, b, c = stable_hash64(["é", "e\u0301", "É"])
    assert len({int(a), int(b), int(c)}) == 3  # no normalisation, no case folding


@pytest.mark.parametrize(
    ("ids", "needle"),
    [
        ("item-1", "`ids` must be a sequence of str"),
        (["a", 3], "`ids[1]` is int"),
        ([b"a"], "`ids[0]` is bytes"),
        (5, "`ids`"),
    ],
)
def test_bad_ids(ids: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        stable_hash64(ids)  # type: ignore[arg-type]
