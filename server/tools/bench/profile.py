"""Where a server's CPU goes, from a py-spy sampling profile taken while a benchmark loads it.

`recd bench recommend` runs py-spy (`pip install py-spy`, part of the dev extras) against `recd serve` for
the Recommend phase, with native frames, and adds the table to its section. A sample whose innermost
frames wait (epoll, a lock, a condition, the GIL) is idle time, not CPU, and is left out; every other
sample goes to the first category whose frame pattern it contains, searching from the innermost frame
outwards, so a sample inside hnswlib counts as the ANN search even though the pipeline called it, and a
NumPy call counts for the step that made it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Innermost frames that mean the thread is blocked, not running.
WAITS = (
    "epoll_wait", "epoll_pwait", "PyThread_acquire_lock_timed", "pthread_cond_timedwait",
    "pthread_cond_wait", "take_gil", "sem_timedwait", "sem_wait", "__futex", "poll (libc", "nanosleep",
    "select (libc", "Condition.wait", "Event.wait",
)  # fmt: skip
# (category, frame patterns), innermost frames tested first against every pattern in this order.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hnswlib search (GIL released)", ("hnswlib", "_knn (shards/index.py")),
    ("Rust core (merge, exclusions, scoring, top-k, MMR)", ("_core.abi3.so", "recd_core")),
    ("Python garbage collector", ("gc_collect",)),
    ("shard search, Python around hnswlib", ("shards/",)),
    ("router and ANN source", ("server/routing/", "server/candidates/ann.py", "server/candidates/exact.py")),
    ("graph source", ("server/candidates/graph.py", "server/backends/memory_graph.py", "neo4j")),
    ("popular source", ("server/candidates/popular.py",)),
    ("hydrate (cache, profile store, user vectors)", ("server/pipeline/steps/hydrate.py", "server/users.py", "server/backends/")),
    ("filter step", ("server/pipeline/steps/filter.py",)),
    ("rank step (features, ranker call)", ("server/pipeline/steps/rank.py", "server/ranking/")),
    ("select step (provenance)", ("server/pipeline/steps/select.py",)),
    ("catalogue lookups", ("server/catalog/",)),
    ("batching, runner, validation", ("server/batching.py", "server/pipeline/", "server/recommender.py", "server/requests.py", "server/validation.py")),
    ("API: servicer and protobuf conversion", ("server/api/services.py", "server/api/convert.py", "server/api/errors.py", "_message", "protobuf")),
    ("metrics (prometheus_client)", ("prometheus_client", "server/api/server.py", "server/metrics.py")),
    ("gRPC (C core, Cython)", ("cygrpc", "grpc",)),
    ("event loop (uvloop, asyncio)", ("uvloop", "loop.c", "asyncio", "_asynciomodule", "run_server_loop")),
    ("thread pools", ("threading.py", "concurrent/futures", "thread_run")),
)  # fmt: skip
IDLE = "waiting (idle, not CPU)"


def available() -> bool:
    return shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()


@contextmanager
def sampled(pid: int, seconds: float, out: Path, delay_s: float = 0.0) -> Iterator[None]:
    """Samples `pid` with py-spy for `seconds` (100 Hz, native frames too, so each sample pauses the
    process for a few microseconds), starting `delay_s` into the body."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen(
        ["sh", "-c", f'sleep {delay_s} && exec "$0" "$@"', exe, "record", "--native", "-f", "raw", "-r", "100", "-d", str(int(seconds)), "-o", str(out),
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


def categorise(raw: str) -> tuple[list[tuple[str, float]], float]:
    """From py-spy's raw (collapsed stacks) output: (category, share of the CPU samples), largest first,
    and the share of all samples that were idle waits."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        counts[_category(stack.split(";"))] += int(n)
    idle = counts.pop(IDLE, 0)
    busy = total - idle
    shares = [(name, count / busy) for name, count in counts.most_common()] if busy else []
    return shares, (idle / total if total else 0.0)


def _category(frames: list[str]) -> str:
    if any(w in frame for frame in frames[-4:] for w in WAITS):
        return IDLE
    for frame in reversed(frames):
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return "other"
