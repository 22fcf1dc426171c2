"""Impression fatigue: items shown to a user again and again without an interaction count as seen.

With `exposures.write_back` every answer is logged; with `exposures.fatigue_after: N`, an item served to
a user in N answers within `exposures.fatigue_window_s` joins what that user's requests exclude (lifted,
with the rest of the seen set, by include_seen). An item the user interacted with is in the seen set
anyway. The exposures are read for every batch (they change with every answer, so they cannot ride in
the cached user state), together with the user states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from server import _core
from server.backends.base import ProfileStore
from server.config import ExposuresConfig
from server.experiments.exposures import ExposureLog

log = logging.getLogger(__name__)

Labels = npt.NDArray[np.uint64]
_NONE: Labels = np.empty(0, np.uint64)


class Fatigue:
    def __init__(
        self,
        log_: ExposureLog,
        store: ProfileStore,
        config: ExposuresConfig,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._log = log_
        self._store = store
        self._after = config.fatigue_after
        self._window_ms = int(config.fatigue_window_s * 1000)
        self._keep = config.keep_per_user
        self._now_ms = wall_clock_ms

    async def labels(self, user_ids: Sequence[str], timeout_s: float) -> list[Labels]:
        """Each user's fatigued items as sorted unique labels, aligned with `user_ids`. A failed read
        leaves fatigue out of this batch (logged) rather than failing the users' hydration."""
        since_ms = self._now_ms() - self._window_ms
        unique = list(dict.fromkeys(user_ids))
        try:
            stored = await self._store.read_exposures(unique, since_ms, self._keep, timeout_s)
        except Exception:
            log.warning("fatigue: exposures not read; served without fatigue this batch", exc_info=True)
            return [_NONE] * len(user_ids)
        pending = self._log.pending(unique)
        by_user = {}
        for user, exposures in zip(unique, stored, strict=True):
            # An answer being written may be both pending here and readable from the store already.
            recent = {
                (e.served_at_ms, e.item_ids, e.arm): e
                for e in pending.get(user, []) + exposures
                if e.served_at_ms >= since_ms
            }
            shown = [i for key in recent for i in key[1]]
            if len(shown) < self._after:
                by_user[user] = _NONE
                continue
            labels, counts = np.unique(_core.stable_hash64(shown), return_counts=True)
            by_user[user] = labels[counts >= self._after]
        return [by_user[u] for u in user_ids]
