"""CPU seconds of a worker group's processes by role over a load window, read from /proc (Linux).

Scale-out is bounded by cores, so a throughput figure alone does not say which process ran out of them:
the group's processes (workers, shard nodes, state nodes, supervisor) are sampled at the window's start
and end, and the difference per role divided by the requests answered in the window is each role's CPU
per request. (The load generators clock their own CPU over the window, loadgen: they exit as it ends,
and a process that has exited is gone from /proc.)
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# The first module name found in a process's command line names its role.
GROUP_ROLES = (
    ("server.workers.worker", "workers"),
    ("server.workers.shard_node", "shard nodes"),
    ("server.workers.state_node", "state nodes"),
    ("server.cli", "supervisor"),
)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in parents and pid not in found:
            found.add(pid)
            todo.extend(children[pid])
    return found


def cpu_by_role(group: int) -> dict[str, float]:
    """CPU seconds so far of `group` and every process under it (each child of a worker group runs in a
    session of its own, so the tree is followed, not the session), by GROUP_ROLES."""
    stats = {int(e): _stat(int(e)) for e in os.listdir("/proc") if e.isdigit()}
    live = {pid: stat for pid, stat in stats.items() if stat is not None}
    parents = {pid: stat[0] for pid, stat in live.items()}
    in_group = _descendants(group, parents)
    out: dict[str, float] = defaultdict(float)
    for pid in in_group:
        line = _cmdline(pid)
        out[next((name for module, name in GROUP_ROLES if module in line), "other")] += live[pid][1]
    return dict(out)


class CpuMeter:
    """Samples `read()` every `interval_s` in a thread; `between(a, b)` is the change from the last
    sample at or before `a` to the first at or after `b` (epoch seconds), by role."""

    def __init__(self, read: Callable[[], dict[str, float]], interval_s: float = 0.25) -> None:
        self._read = read
        self._interval_s = interval_s
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def __enter__(self) -> CpuMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._samples.append((time.time(), self._read()))
            if self._stop.wait(self._interval_s):
                self._samples.append((time.time(), self._read()))
                return

    def between(self, start: float, end: float) -> dict[str, float]:
        before = [s for t, s in self._samples if t <= start]
        after = [s for t, s in self._samples if t >= end]
        if not before or not after:
            raise ValueError("the meter did not sample both ends of the window")
        first, last = before[-1], after[0]
        # A process that ended inside the window (none should) would make its role's change negative.
        return {role: max(0.0, last.get(role, 0.0) - first.get(role, 0.0)) for role in last}
