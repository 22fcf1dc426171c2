"""The load test's own logic: run-time parsing, the pass/fail verdict, the edge hit rate, the plot.

(The locustfile itself is not imported here: it switches gRPC to gevent for the whole process.)"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

from loadtests.plot import write_plot
from loadtests.run import edge_hit_rate, run_seconds, verdict


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30), ("30s", 30), ("2m", 120), ("1h30m", 5400), ("1m5s", 65)]
)
def test_run_seconds(text: str, seconds: int) -> None:
    assert run_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m"])
def test_run_seconds_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        run_seconds(text)


def rows(failures: int = 0, p99: float = 50.0) -> list[dict[str, float | str]]:
    return [
        {"rpc": "Recommend", "failures": failures, "p99_ms": p99},
        {"rpc": "SimilarItems", "failures": 0, "p99_ms": 20.0},
        {"rpc": "all", "failures": failures, "p99_ms": p99},
    ]


@pytest.mark.parametrize(
    ("failures", "p99", "budget", "problems"),
    [
        (0, 50.0, None, 0),
        (0, 50.0, 100.0, 0),
        (0, 150.0, 100.0, 1),
        (3, 50.0, 100.0, 1),
        (3, 150.0, 100.0, 2),
        (3, 50.0, None, 1),
    ],
)
def test_verdict(failures: int, p99: float, budget: float | None, problems: int) -> None:
    assert len(verdict(rows(failures, p99), budget)) == problems


def test_edge_hit_rate_from_metric_deltas() -> None:
    name = "recd_edge_cache_requests_total"
    before = {f'{name}{{level="l1",outcome="hit"}}': 10.0}
    after = {
        f'{name}{{level="l1",outcome="hit"}}': 70.0,
        f'{name}{{level="l1",outcome="stale"}}': 10.0,
        f'{name}{{level="l1",outcome="miss"}}': 20.0,
        f'{name}{{level="origin",outcome="coalesced"}}': 4.0,
    }
    got = edge_hit_rate(before, after)
    assert got["lookups"] == 90 and got["served_from_cache"] == pytest.approx(70 / 90)
    assert got["coalesced"] == 4


def test_plot_writes_a_png(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    columns = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "95%", "99%"]
    with history.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for t in range(10):
            for name in ("Recommend", "Aggregated"):
                writer.writerow(
                    [
                        1000 + t,
                        5,
                        "grpc" if name != "Aggregated" else "",
                        name,
                        100,
                        0,
                        5,
                        20,
                        40 if t else "N/A",
                    ]
                )
    png = write_plot(history, tmp_path / "out.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
