"""The scale bench's CPU meter: a busy process in the group's session is counted under its role, an idle
one barely, and a window's change comes from the samples around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from server.tools.bench.cpumeter import CpuMeter, cpu_by_role

BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def _group(code: str) -> subprocess.Popen[bytes]:
    """A group root whose child (in a session of its own, as a worker group's children are) runs `code`;
    the child's command line names a worker's module, so that the meter files it under "workers"."""
    launcher = (
        "import subprocess, sys\n"
        # The module name is built at run time so that the launcher's own command line does not hold it.
        f"subprocess.Popen([sys.executable, '-c', {code!r}, 'server.workers.' + 'worker'], start_new_session=True)"
        ".wait()\n"
    )
    return subprocess.Popen([sys.executable, "-c", launcher])


def test_a_group_that_has_ended_is_not_counted() -> None:
    group = _group(BUSY.format(s=0.1))
    group.wait(timeout=30)
    assert cpu_by_role(group.pid) == {}


def test_cpu_of_a_live_group_by_role() -> None:
    child = _group(BUSY.format(s=0.5) + "time.sleep(30)\n")
    # A busy process outside the group is not counted.
    outsider = subprocess.Popen([sys.executable, "-c", BUSY.format(s=0.3) + "time.sleep(30)\n"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen = cpu_by_role(child.pid)
            if seen.get("workers", 0) >= 0.5:
                break
            time.sleep(0.05)
        assert seen["workers"] == pytest.approx(0.5, abs=0.25)
        assert set(seen) == {"workers", "other"}  # "other": the group's root, the launcher
        assert seen["other"] < 0.25
    finally:
        os.killpg(os.getpgid(_only_child(child.pid)), signal.SIGKILL)
        child.kill()
        outsider.kill()
        child.wait()
        outsider.wait()


def _only_child(pid: int) -> int:
    return int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])


def test_a_window_takes_the_samples_around_it() -> None:
    clock = iter(range(1000))
    with CpuMeter(lambda: {"workers": float(next(clock))}, interval_s=0.01) as meter:
        time.sleep(0.2)
        start = time.time()
        time.sleep(0.2)
        end = time.time()
        time.sleep(0.05)
    change = meter.between(start, end)["workers"]
    assert 10 <= change <= 30  # about 20 samples 0.01 s apart, one unit each


def test_a_window_outside_the_samples_is_refused() -> None:
    with CpuMeter(lambda: {"workers": 0.0}, interval_s=0.01) as meter:
        time.sleep(0.03)
    with pytest.raises(ValueError, match="both ends"):
        meter.between(time.time() - 1000, time.time() + 1000)
