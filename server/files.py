"""Watching a config-like file for changes without a thread: a cheap stamp compared now and then."""

from __future__ import annotations

import os

Stamp = tuple[int, int, int]


def stamp(path: str) -> Stamp | None:
    """What changes when the file is replaced or rewritten (inode, mtime, size); None if it is unreadable.
    The inode catches an atomic rename onto the path (how Kubernetes updates a mounted ConfigMap)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
