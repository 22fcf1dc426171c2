"""Per-user versions: the key component that lets one user's writes invalidate that user's answers only.

A RecordInteractions through the edge gives the user a new random version token; every key built from
then on differs from the old ones, so the user's cached answers stop matching without a scan or a delete,
and nobody else's are touched. Tokens are random rather than counters so that replicas can bump without
coordinating (no atomic increment needed, only Cache.set) and a token never comes back after a restart.

Where the token lives:
- with Redis (shared level): Redis holds the truth, kept record_ttl_s, which outlives every entry made
  under an older token; each process remembers tokens for refresh_s, so a bump on another replica is
  seen within refresh_s. When Redis says nothing (key gone, or Redis down) the remembered token stays:
  an old token is never wrong for this process, "0" might resurrect entries from before a bump.
- without Redis: this process is the only writer, so its memory is the truth and never needs a re-read.
  Forgetting a bumped user early (the max_users bound) would make "0" valid again for them, so that
  instead moves every never-bumped user to a new default token: a wave of misses, never a stale answer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from server import metrics
from server.backends.base import Cache
from server.edge.keys import user_version_key

Clock = Callable[[], float]


class UserVersions:
    def __init__(
        self,
        shared: Cache | None,
        max_users: int,
        refresh_s: float,
        record_ttl_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        self._shared = shared
        self._max_users = max_users
        self._refresh_s = refresh_s
        self._record_ttl_s = record_ttl_s
        self._clock = clock
        # user -> (token, when it was set or last read from the shared level); least recent first.
        self._local: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._generation = 0

    @property
    def default(self) -> str:
        return "0" if self._generation == 0 else f"0.{self._generation}"

    def __len__(self) -> int:
        return len(self._local)

    async def get(self, user_id: str) -> str:
        now = self._clock()
        known = self._local.get(user_id)
        if known is not None and (self._shared is None or now - known[1] < self._refresh_s):
            self._local.move_to_end(user_id)
            return known[0]
        if self._shared is None:
            return self.default
        blob = await self._shared.get(user_version_key(user_id))
        token = "0" if known is None else known[0]
        if blob is not None:
            token = blob.decode(errors="replace")
        self._remember(user_id, token, now)
        return token

    async def bump(self, user_ids: Iterable[str]) -> None:
        users = set(user_ids)
        now = self._clock()
        writes = []
        for user in users:
            token = os.urandom(6).hex()
            self._remember(user, token, now)
            if self._shared is not None:
                writes.append(self._shared.set(user_version_key(user), token.encode(), self._record_ttl_s))
        if writes:
            await asyncio.gather(*writes)
        metrics.EDGE_USER_VERSION_BUMPS.inc(len(users))

    def _remember(self, user_id: str, token: str, now: float) -> None:
        self._local[user_id] = (token, now)
        self._local.move_to_end(user_id)
        while len(self._local) > self._max_users:
            _, (evicted, set_at) = self._local.popitem(last=False)
            if self._shared is None and evicted != self.default and now - set_at < self._record_ttl_s:
                self._generation += 1
