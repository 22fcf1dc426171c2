"""Keeps this frontend's popularity counts in step with the profile store's shared ones.

The profile store holds the time-decayed interaction counts that every frontend's writes add to; each
frontend re-reads them every `popularity.refresh_s` and pushes them into its ItemStore as absolute
values (a refresh replaces, it never adds, so nothing is counted twice). A write through this frontend
asks for an early refresh, so its own writes show promptly; early refreshes are at least
_EARLY_GAP_S apart, so a stream of writes costs at most one read of the counts per gap. A failed
refresh is logged and counted and the old counts stay in use: popularity is never worth failing for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server import metrics
from server.backends.base import ProfileStore
from server.catalog.item_store import ItemStore

log = logging.getLogger(__name__)

# Ceiling of one read of the counts (a paged read of whole partitions with a remote store).
_READ_TIMEOUT_S = 30.0
_EARLY_GAP_S = 1.0


class PopularitySync:
    def __init__(self, profiles: ProfileStore, items: ItemStore, refresh_s: float) -> None:
        if not refresh_s > 0:
            raise ValueError(f"popularity.refresh_s must be > 0, got {refresh_s}")
        self._profiles = profiles
        self._items = items
        self._refresh_s = refresh_s
        self._early_gap_s = min(_EARLY_GAP_S, refresh_s)
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_refresh = -float("inf")
        self._closed = False
        self._applied_counts: object = None
        self._catalogue_changed = True
        items.add_listener(self._on_catalogue_change)

    def _on_catalogue_change(self, rows: object, vectors: object) -> None:
        self._catalogue_changed = True

    async def start(self) -> None:
        """Refreshes once now (after the catalogue is hydrated), then every refresh_s in the background."""
        if self._closed or self._task is not None:
            return
        await self.refresh()
        self._start_loop()

    def poke(self) -> None:
        """Asks for an early refresh (after a write through this frontend); starts the loop if needed."""
        if self._closed:
            return
        self._poked.set()
        self._start_loop()

    async def refresh(self) -> bool:
        """Reads every list's counts and pushes them into the ItemStore; False (logged) on failure."""
        self._last_refresh = time.monotonic()
        try:
            counts = await self._profiles.item_popularity(_READ_TIMEOUT_S)
            # Resolving ids to rows is O(counted items) of Python that holds the GIL even on a worker
            # thread: skipped when neither the counts (an embedded store answers with the same object
            # until a write) nor the catalogue (new items take their counts) changed since last time.
            if counts is not self._applied_counts or self._catalogue_changed:
                self._catalogue_changed = False
                for list_name, per_item in counts.items():
                    await asyncio.to_thread(self._items.set_popularity_counts, list_name, per_item)
                # The new orders are sorted here, off the request path: left to the next reader, that
                # sort of the whole catalogue landed inside a Recommend's popular-step budget.
                await asyncio.to_thread(self._items.rebuild_popularity)
                self._applied_counts = counts
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._catalogue_changed = True  # whatever was not pushed is pushed by the next refresh
            metrics.POPULARITY_REFRESHES.labels("error").inc()
            log.warning("reading the popularity counts failed (the previous ones stay in use): %s", exc)
            return False
        metrics.POPULARITY_REFRESHES.labels("ok").inc()
        return True

    def _start_loop(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="popularity-sync")

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._last_refresh + self._refresh_s - time.monotonic())):
                    await self._poked.wait()
                    # Poked: no sooner than the gap after the previous refresh.
                    await asyncio.sleep(max(0.0, self._last_refresh + self._early_gap_s - time.monotonic()))
            self._poked.clear()
            await self.refresh()

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
