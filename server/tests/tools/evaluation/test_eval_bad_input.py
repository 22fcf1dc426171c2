"""Bad input: a clear message and a count of what was skipped, exit status 2 when nothing is usable,
and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.cli import main
from server.tools.evaluation.dataset import UnusableInput, read_dataset

N_ITEMS = 40
DIM = 4


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def items(n: int = N_ITEMS) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [
        {
            "item_id": f"i{i}",
            "embedding": rng.normal(size=DIM).round(3).tolist(),
            "popularity": float(i % 7),
            "created_at_ms": 1_700_000_000_000,
        }
        for i in range(n)
    ]


def clicks(user: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    """`n` interactions in time order with items of one neighbourhood of the catalogue."""
    base = sum(map(ord, user)) % N_ITEMS
    return [
        {
            "user_id": user,
            "item_id": f"i{(base + 3 * t) % N_ITEMS}",
            "timestamp_ms": 1_700_000_000_000 + 1000 * (start + t),
        }
        for t in range(n)
    ]


def dataset(
    tmp_path: Path, interactions: list[dict[str, Any]], item_rows: list[dict[str, Any]] | None = None
) -> Path:
    write_jsonl(tmp_path / "items.jsonl", items() if item_rows is None else item_rows)
    write_jsonl(tmp_path / "interactions.jsonl", interactions)
    return tmp_path


def test_unknown_items_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [*clicks("u1", 6), {"user_id": "u1", "item_id": "nope", "timestamp_ms": 1_700_000_100_000}]
    d = read_dataset(dataset(tmp_path, rows))
    assert d.report.skipped == {"item not in the items file": 1}
    assert "'nope'" in d.report.examples["item not in the items file"]
    assert len(d.histories["u1"]) == 6 and d.report.interactions_read == 7


def test_missing_or_bad_timestamps_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        *clicks("u1", 4),
        {"user_id": "u1", "item_id": "i1"},
        {"user_id": "u1", "item_id": "i2", "timestamp_ms": None},
        {"user_id": "u1", "item_id": "i3", "timestamp_ms": "yesterday"},
        {"user_id": "u1", "item_id": "i4", "timestamp_ms": 0},
        {"user_id": "u1", "item_id": "i5", "timestamp_ms": 1_700_000_000_000, "weight": -1},
    ]
    d = read_dataset(dataset(tmp_path, rows))
    assert d.report.skipped == {
        "timestamp_ms missing": 2,
        "timestamp_ms malformed": 1,
        "timestamp_ms not positive": 1,
        "refused by the server's checks": 1,
    }
    assert "row 5" in d.report.examples["timestamp_ms missing"]
    assert len(d.histories["u1"]) == 4
    assert d.report.interactions_read == 9 and d.report.interactions_kept == 4


def test_rows_out_of_time_order_are_sorted_and_counted(tmp_path: Path) -> None:
    rows = [*reversed(clicks("u1", 5)), *clicks("u2", 5)]
    d = read_dataset(dataset(tmp_path, rows))
    assert d.report.users_out_of_order == 1
    times = [x.timestamp_ms for x in d.histories["u1"]]
    assert times == sorted(times)
    assert not d.report.skipped


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "absent", "no such directory"),
        (lambda p: p, "no dataset files"),
        (lambda p: dataset(p, []), "no usable interactions"),
        (
            lambda p: dataset(p, [{"user_id": "u", "item_id": "x", "timestamp_ms": 5}]),
            "1 skipped: item not in the items file",
        ),
        (lambda p: dataset(p, clicks("u", 3), item_rows=[]), "no items"),
        (
            lambda p: dataset(p, clicks("u", 3), item_rows=[{"item_id": "i0", "embedding": "oops"}]),
            "embedding",
        ),
        (
            lambda p: dataset(
                p, clicks("u", 3), item_rows=[items()[0], {**items()[1], "embedding": [1.0, 2.0]}]
            ),
            "dimensions",
        ),
    ],
)
def test_unusable_input(tmp_path: Path, setup: Any, message: str) -> None:
    with pytest.raises(UnusableInput, match=message):
        read_dataset(setup(tmp_path))


def test_a_missing_interactions_file_is_unusable(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "items.jsonl", items())
    with pytest.raises(UnusableInput, match="no interactions file"):
        read_dataset(tmp_path)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no usable interactions"),
        # every user has a single interaction: nobody can be evaluated
        (
            [r for u in ("a", "b", "c") for r in clicks(u, 1)],
            "no user can be evaluated (3 users: 3 too few interactions)",
        ),
    ],
)
def test_cli_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[dict[str, Any]], message: str
) -> None:
    assert main(["eval", str(dataset(tmp_path, rows)), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_exit_2_for_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(tmp_path / "nope"), "--out", str(tmp_path / "m.yaml"), "--no-progress"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_cli_evaluates_what_is_usable_and_reports_what_was_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict[str, Any]] = []
    for u in range(8):
        rows.extend(clicks(f"u{u}", 12))
    rows.extend(clicks("once", 1))  # a user with one interaction
    rows.append({"user_id": "u1", "item_id": "ghost", "timestamp_ms": 1_700_000_000_500})
    rows.append({"user_id": "u2", "item_id": "i1"})  # no timestamp
    rows.extend(reversed(clicks("late", 11)))  # out of time order
    out_json = tmp_path / "eval.json"
    code = main(
        ["eval", str(dataset(tmp_path, rows)), "--no-progress", "--out-json", str(out_json), "-k", "5"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = captured.out
    assert "1 skipped: item not in the items file" in report
    assert "1 skipped: timestamp_ms missing" in report
    assert "1 users' rows were out of time order" in report
    figures = json.loads(out_json.read_text())
    assert figures["users_evaluated"] == 9
    assert figures["users_skipped"]["too few interactions"] == 1
    assert figures["served"]["seen_share"] == 0.0
