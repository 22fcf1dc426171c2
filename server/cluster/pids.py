"""Which processes run a local cluster (`recd cluster down`), however they were started.

A pid from the state file is the cluster's only while it is the same process: pids are reused, so the
start time recorded at spawn (/proc/<pid>/stat, in clock ticks since boot) must match. A process started
by hand (`recd shard --node-id 2 --config data/cluster/cluster.yaml`, after a kill) is in no state file:
it is the cluster's because it listens on one of the cluster's addresses, or because its command line
names the cluster's config file. Only processes of this user are considered. Linux only (/proc).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone (or a zombie)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # exited, not yet reaped by its parent: nothing left to stop
    return int(fields[19])  # field 22 of the whole line


def is_same(pid: int, started: int) -> bool:
    return started > 0 and start_time(pid) == started


def _own_pids() -> list[int]:
    uid = os.getuid()
    pids = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _listening_inodes(ports: set[int]) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(cols[9])
    return inodes


def listening_on(ports: Iterable[int]) -> set[int]:
    """This user's processes that listen on any of these TCP ports."""
    inodes = _listening_inodes(set(ports))
    if not inodes:
        return set()
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = set()
    for pid in _own_pids():
        try:
            fds = list((_PROC / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def naming_config(config: Path) -> set[int]:
    """This user's recd processes (`recd ...`, `python -m server...`) whose command line names `config`
    (relative paths resolved against the process's working directory)."""
    target = config.resolve()
    found = set()
    for pid in _own_pids():
        try:
            args = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(_PROC / str(pid) / "cwd"))
        except OSError:
            continue
        if not any(os.path.basename(a) == b"recd" or a.startswith(b"server.") for a in args[:3]):
            continue  # an editor or a pager with the file open is not the cluster's
        for raw in args:
            arg = os.fsdecode(raw)
            value = arg.split("=", 1)[1] if arg.startswith("--config=") else arg
            if value and value.endswith(target.name) and (cwd / value).resolve() == target:
                found.add(pid)
                break
    return found
