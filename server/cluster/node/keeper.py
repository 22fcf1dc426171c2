"""What a shard node follows: the cluster layout, kept in `<data_dir>/node-N/layout.json` (written
atomically before it is followed), so a restart resumes the layout it had, whatever the config file says.

The keeper is the LayoutKeeper of shards/service.py: a newer layout, handed over through the node's
SetLayout (which lets the writes already admitted finish first), opens the shards it places here (empty)
and, when asked, drops the ones it no longer places here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from server.cluster.layout import Layout
from shards.host import ShardHost
from shards.records import ErrorKind, NodeLayout, ShardError, invalid

log = logging.getLogger(__name__)

LAYOUT_FILE = "layout.json"


def load_layout(directory: Path | None) -> Layout | None:
    if directory is None or not (directory / LAYOUT_FILE).exists():
        return None
    return Layout.from_json((directory / LAYOUT_FILE).read_text())


def save_layout(directory: Path | None, layout: Layout) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f"{LAYOUT_FILE}.tmp"
    with open(temp, "w") as f:
        f.write(layout.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, directory / LAYOUT_FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeLayoutKeeper:
    """Follows layouts by opening, receiving and dropping shards."""

    def __init__(self, name: str, host: ShardHost, directory: Path | None, layout: Layout) -> None:
        self.name = name
        self._host = host
        self._dir = directory
        self._layout = layout
        self._lock = threading.Lock()
        self.incarnation = time.time_ns()
        host.set_receiving(layout.receiving(name))

    @property
    def epoch(self) -> int:
        return self._layout.epoch

    @property
    def layout(self) -> Layout:
        return self._layout

    def current(self) -> NodeLayout:
        layout = self._layout
        return NodeLayout(layout.epoch, layout.to_json(), self._host.shard_ids, self.name, self.incarnation)

    def adopt(self, layout_json: str, drop_unplaced: bool) -> NodeLayout:
        try:
            layout = Layout.from_json(layout_json)
        except ValueError as exc:
            raise invalid(f"layout_json: {exc}") from None
        with self._lock:
            old = self._layout
            if layout.epoch < old.epoch or (layout.epoch == old.epoch and layout != old):
                raise ShardError(
                    f"layout epoch {layout.epoch} is not newer than this node's {old.epoch}",
                    ErrorKind.INVALID_ARGUMENT,
                )
            save_layout(self._dir, layout)
            hosted = layout.hosted(self.name)
            # A shard newly placed here starts empty: whatever an earlier stint left is stale.
            opened = self._host.add_shards([s for s in hosted if s not in old.hosted(self.name)], fresh=True)
            opened += self._host.add_shards(hosted)  # placed all along but missing (should not happen)
            self._host.set_receiving(layout.receiving(self.name))
            dropped = (
                self._host.drop_shards([s for s in self._host.shard_ids if s not in hosted])
                if drop_unplaced
                else []
            )
            self._layout = layout
        log.info(
            "%s: layout epoch %d (%s); opened shards %s, dropped %s; hosting %s",
            self.name,
            layout.epoch,
            layout.phase,
            opened,
            dropped,
            self._host.shard_ids,
        )
        return self.current()
