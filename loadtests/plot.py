"""A PNG of a Locust run over time: latency percentiles above, throughput and failures below.

    python -m loadtests.plot loadtests/results/loadtest_stats_history.csv loadtests/results/loadtest.png

Reads the `--csv-full-history` file (one row per RPC and one "Aggregated" row per interval). Locust's
percentiles there are over a sliding window of the last few seconds, so the curves show how latency
moved during the run rather than the run's cumulative figures.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter

PERCENTILES = ("50%", "95%", "99%")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" before the first answer of an RPC
        return float("nan")


def _latency(row: dict[str, float], column: str) -> float:
    # Locust writes 0 for a percentile of a window without answers; a gap says that better than a dive.
    value = row[column]
    return value if value > 0 else float("nan")


def read_history(path: Path) -> dict[str, list[dict[str, float]]]:
    """Rows per name ("Aggregated", "Recommend", ...), each a dict of the numeric columns."""
    series: dict[str, list[dict[str, float]]] = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            series[row["Name"]].append({k: _number(v) for k, v in row.items() if k not in ("Type", "Name")})
    return dict(series)


def write_plot(history_csv: Path, out_png: Path, title: str = "recd load test") -> Path:
    series = read_history(history_csv)
    total = series.get("Aggregated", [])
    if not total:
        raise ValueError(f"{history_csv} has no Aggregated rows: was Locust run with --csv-full-history?")
    start = total[0]["Timestamp"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=(3, 2))

    def seconds(rows: list[dict[str, float]]) -> list[float]:
        return [r["Timestamp"] - start for r in rows]

    for p, style in zip(PERCENTILES, ("-", "--", "-"), strict=True):
        top.plot(seconds(total), [_latency(r, p) for r in total], style, label=f"all RPCs p{p.rstrip('%')}")
    for name, rows in sorted(series.items()):
        if name != "Aggregated":
            top.plot(seconds(rows), [_latency(r, "99%") for r in rows], ":", label=f"{name} p99")
    top.set_ylabel("latency, ms")
    top.set_yscale("log")  # cache hits and origin calls differ by an order of magnitude
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.yaxis.set_minor_formatter(ScalarFormatter())
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title)

    bottom.plot(seconds(total), [r["Requests/s"] for r in total], label="requests/s")
    bottom.plot(seconds(total), [r["Failures/s"] for r in total], label="failures/s", color="tab:red")
    bottom.set_ylabel("per second")
    bottom.set_xlabel("seconds since start")
    bottom.grid(True, alpha=0.3)
    users = bottom.twinx()
    users.plot(seconds(total), [r["User Count"] for r in total], color="tab:gray", alpha=0.6, label="users")
    users.set_ylabel("users")
    lines = bottom.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    bottom.legend(lines, [str(line.get_label()) for line in lines], loc="lower right", fontsize=8)

    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("history_csv", type=Path)
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--title", default="recd load test")
    args = parser.parse_args(argv)
    print(write_plot(args.history_csv, args.out_png, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
