from __future__ import annotations

import numpy as np
import pytest

from shards import oplog
from shards.tests.helpers import batch_of


@pytest.mark.parametrize("n", [1, 7])
def test_upsert_round_trip(n: int) -> None:
    rng = np.random.default_rng(n)
    batch = batch_of(np.array([2**64 - 2, *range(n - 1)], dtype=np.uint64), rng.normal(size=(n, 5)), tag="é")
    op = oplog.decode(oplog.encode_upsert(batch))
    assert isinstance(op, oplog.UpsertOp)
    assert op.batch.equals(batch)


def test_delete_round_trip() -> None:
    labels = np.array([0, 5, 2**64 - 2], dtype=np.uint64)
    op = oplog.decode(oplog.encode_delete(labels))
    assert isinstance(op, oplog.DeleteOp)
    np.testing.assert_array_equal(op.labels, labels)


@pytest.mark.parametrize(
    "record",
    [b"", b"\x09\x01", b"\x01\x07\x00\x00", oplog.encode_upsert(batch_of([1], np.ones((1, 3))))[:-1]],
    ids=["empty", "version", "op", "truncated"],
)
def test_malformed_records_are_refused(record: bytes) -> None:
    with pytest.raises(oplog.OpDecodeError):
        oplog.decode(record)
