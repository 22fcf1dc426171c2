"""Where a server's CPU goes, from a py-spy sampling profile taken while a benchmark loads it.

`recd bench recommend` runs py-spy (when it is installed: `pip install py-spy`) against `recd serve` for
the Recommend phase and adds the table to its section. Each sample is put in the first category whose
frame pattern it contains, searching from the innermost frame outwards, so a sample inside hnswlib
counts as the ANN search even though the pipeline called it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# (category, frame patterns), innermost frames tested first against every pattern in this order.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hnswlib search (GIL released)", ("_knn (shards/index.py",)),
    ("shard search, Python around hnswlib", ("shards/",)),
    ("router and ANN source", ("server/shard_router.py", "server/candidates/ann.py", "server/candidates/exact.py")),
    ("graph source", ("server/candidates/graph.py", "server/backends/memory_graph.py", "neo4j")),
    ("popular source", ("server/candidates/popular.py",)),
    ("hydrate (cache, profile store, user vectors)", ("server/pipeline/steps/hydrate.py", "server/users.py", "server/backends/")),
    ("filter step (native merge + filters)", ("server/pipeline/steps/filter.py",)),
    ("rank step (features + ranker)", ("server/pipeline/steps/rank.py", "server/ranking/")),
    ("select step (MMR + provenance)", ("server/pipeline/steps/select.py",)),
    ("catalogue lookups", ("server/catalog/",)),
    ("batching, runner, validation", ("server/batching.py", "server/pipeline/", "server/recommender.py", "server/requests.py", "server/validation.py")),
    ("API: servicer and protobuf conversion", ("server/api/services.py", "server/api/convert.py", "server/api/errors.py")),
    ("metrics (prometheus_client)", ("prometheus_client", "server/api/server.py", "server/metrics.py")),
    ("gRPC and the asyncio event loop", ("grpc", "asyncio", "run_server_loop", "selectors.py")),
    ("other threads (pools, waits)", ("threading.py", "concurrent/futures")),
)  # fmt: skip


def available() -> bool:
    return shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()


@contextmanager
def sampled(pid: int, seconds: float, out: Path, delay_s: float = 0.0) -> Iterator[None]:
    """Samples `pid` with py-spy for `seconds` (100 Hz, without pausing it), starting `delay_s` into the
    body."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen(
        ["sh", "-c", f'sleep {delay_s} && exec "$0" "$@"', exe, "record", "--nonblocking", "-f", "raw", "-r", "100", "-d", str(int(seconds)), "-o", str(out),
         "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()


def categorise(raw: str) -> list[tuple[str, float]]:
    """(category, share of samples) from py-spy's raw (collapsed stacks) output, largest first."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        counts[_category(stack.split(";"))] += int(n)
    return [(name, count / total) for name, count in counts.most_common()] if total else []


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return "other"
