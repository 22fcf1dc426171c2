from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import pytest

from shards.wal import WALCorruptionError, WALError, WriteAheadLog

RECORDS = [b"first", b"x" * 300, bytes(range(256)), b"the last record"]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def record_offsets(records: list[bytes]) -> list[int]:
    """Start offset of each framed record in a fresh segment."""
    offsets, off = [], 0
    for r in records:
        offsets.append(off)
        off += 8 + len(r)
    return offsets


def write_log(directory: Path, records: list[bytes]) -> None:
    with WriteAheadLog(directory, group_commit_window_s=0) as wal:
        for r in records:
            wal.append([r])


def test_round_trip_and_lsns(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, group_commit_window_s=0) as wal:
        assert wal.append([b"a"]) == 1
        assert wal.append([b"b", b"c", b"d"]) == 4
        assert wal.append([b"e"]) == 5
        assert list(wal.replay()) == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d"), (5, b"e")]
        assert list(wal.replay(after_lsn=3)) == [(4, b"d"), (5, b"e")]
    with WriteAheadLog(tmp_path) as wal:
        assert wal.next_lsn == 6
        assert [r for _, r in wal.replay()] == [b"a", b"b", b"c", b"d", b"e"]
        assert wal.append([b"f"]) == 6
        assert wal.size_bytes == sum(8 + len(r) for r in [b"a", b"b", b"c", b"d", b"e", b"f"])


@pytest.mark.parametrize("bad", [[], [b""]], ids=["no records", "empty record"])
def test_rejects_empty_appends(tmp_path: Path, bad: list[bytes]) -> None:
    with WriteAheadLog(tmp_path) as wal, pytest.raises(ValueError):
        wal.append(bad)


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.close()
    with pytest.raises(WALError):
        wal.append([b"late"])


def test_append_async(tmp_path: Path) -> None:
    import asyncio

    async def main() -> list[int]:
        with WriteAheadLog(tmp_path) as wal:
            return list(await asyncio.gather(*(wal.append_async([b"r%d" % i]) for i in range(10))))

    assert sorted(asyncio.run(main())) == list(range(1, 11))


def _truncate(path: Path, start: int, end: int, offset: int) -> None:
    os.truncate(path, offset)


def _flip_payload_byte(path: Path, start: int, end: int, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _zero_fill_after(path: Path, start: int, end: int, offset: int) -> None:
    # A crash can leave the file extended with zeros where the last write should be.
    data = bytearray(path.read_bytes())
    data[offset:end] = bytes(end - offset)
    path.write_bytes(bytes(data))


def _cases() -> list[tuple[str, object, int]]:
    last = RECORDS[-1]
    start = record_offsets(RECORDS)[-1]
    end = start + 8 + len(last)
    cases: list[tuple[str, object, int]] = []
    cases += [("truncate", _truncate, off) for off in range(start + 1, end)]  # short header or short payload
    cases += [
        ("crc", _flip_payload_byte, off) for off in range(start + 8, end)
    ]  # payload bit rot at the tail
    cases += [("crc-in-crc-field", _flip_payload_byte, off) for off in range(start + 4, start + 8)]
    cases += [("zero-fill", _zero_fill_after, off) for off in (start, start + 3, start + 8, end - 1)]
    return cases


@pytest.mark.parametrize(("kind", "damage", "offset"), _cases(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_torn_tail_is_dropped(tmp_path: Path, kind: str, damage: object, offset: int) -> None:
    write_log(tmp_path, RECORDS)
    (path,) = segments(tmp_path)
    start = record_offsets(RECORDS)[-1]
    end = start + 8 + len(RECORDS[-1])
    damage(path, start, end, offset)  # type: ignore[operator]
    with WriteAheadLog(tmp_path) as wal:
        assert [r for _, r in wal.replay()] == RECORDS[:-1]
        assert path.stat().st_size == start
        assert wal.append([b"after recovery"]) == len(RECORDS)
    with WriteAheadLog(tmp_path) as wal:
        assert [r for _, r in wal.replay()] == [*RECORDS[:-1], b"after recovery"]


@pytest.mark.parametrize("record", [0, 1, 2], ids=lambda i: f"record{i}")
@pytest.mark.parametrize("where", ["payload", "crc", "length"])
def test_corruption_in_the_middle_raises(tmp_path: Path, record: int, where: str) -> None:
    write_log(tmp_path, RECORDS)
    (path,) = segments(tmp_path)
    start = record_offsets(RECORDS)[record]
    offset = {"payload": start + 9, "crc": start + 5, "length": start + 2}[where]
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(WALCorruptionError):
        WriteAheadLog(tmp_path)


def test_torn_end_of_an_older_segment_is_corruption(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, group_commit_window_s=0) as wal:
        wal.append([b"one", b"two"])
        wal.rotate()
        wal.append([b"three"])
    first = segments(tmp_path)[0]
    os.truncate(first, first.stat().st_size - 1)
    with pytest.raises(WALCorruptionError):
        WriteAheadLog(tmp_path)


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, group_commit_window_s=0) as wal:
        for i in range(3):
            wal.append([b"r%d" % i])
            wal.rotate()
    segments(tmp_path)[1].unlink()
    with pytest.raises(WALCorruptionError):
        WriteAheadLog(tmp_path)


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    threads, per_thread = 8, 200
    wal = WriteAheadLog(tmp_path, group_commit_window_s=0.002)
    acknowledged: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            acknowledged[t].append(wal.append([f"{t}:{i}".encode()]))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = threads * per_thread
    assert wal.fsync_count <= total / 3, f"{wal.fsync_count} fsyncs for {total} appends"
    lsns = sorted(lsn for acks in acknowledged for lsn in acks)
    assert lsns == list(range(1, total + 1))
    wal.close()
    with WriteAheadLog(tmp_path) as reopened:
        replayed = dict(reopened.replay())
    assert len(replayed) == total
    for t, acks in enumerate(acknowledged):
        # Each thread's records come back, in its own order, at the LSNs it was given.
        assert [replayed[lsn] for lsn in acks] == [f"{t}:{i}".encode() for i in range(per_thread)]


def test_rotate_and_drop_before(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, group_commit_window_s=0)
    wal.append([b"1", b"2", b"3"])
    assert wal.rotate() == 4
    assert wal.rotate() == 4, "rotating an empty segment is a no-op"
    wal.append([b"4", b"5"])
    assert wal.rotate() == 6
    wal.append([b"6"])
    assert wal.segment_count == 3
    assert wal.drop_before(5) == 1, "only segments entirely below the LSN go"
    assert [lsn for lsn, _ in wal.replay()] == [4, 5, 6]
    assert wal.first_lsn == 4
    assert wal.drop_before(100) == 1, "the active segment is never dropped"
    assert [lsn for lsn, _ in wal.replay()] == [6]
    wal.close()
    with WriteAheadLog(tmp_path) as reopened:
        assert reopened.first_lsn == 6
        assert reopened.append([b"7"]) == 7


def test_first_lsn_of_an_empty_directory(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, first_lsn=42) as wal:
        assert wal.append([b"x"]) == 42
    with WriteAheadLog(tmp_path, first_lsn=1) as wal:  # ignored once segments exist
        assert wal.next_lsn == 43


def test_large_groups_roll_over_to_new_segments(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, group_commit_window_s=0, max_segment_bytes=1000) as wal:
        for i in range(20):
            wal.append([bytes([i]) * 300])
        assert wal.segment_count > 5
        assert [r[0] for _, r in wal.replay()] == list(range(20))
    with WriteAheadLog(tmp_path) as wal:
        assert [lsn for lsn, _ in wal.replay()] == list(range(1, 21))


def test_framing_is_length_crc_payload_little_endian(tmp_path: Path) -> None:
    write_log(tmp_path, [b"hello"])
    (path,) = segments(tmp_path)
    data = path.read_bytes()
    assert data == (5).to_bytes(4, "little") + zlib.crc32(b"hello").to_bytes(4, "little") + b"hello"
