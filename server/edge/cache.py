"""The edge's Recommend path: two cache levels, stale-while-revalidate, and coalesced misses.

    L1 (in-process LRU, bytes-bounded) -> fresh: answer; stale: answer, refresh in the background once
      | miss
    fill, one per key in flight (identical concurrent misses wait for it: "coalesced")
      L2 (Redis, shared by replicas)   -> fresh: answer; stale: answer, refresh in the background
        | miss
      origin (a frontend)              -> answer; stored in L1 and L2 for the origin's TTL

A hit returns the origin's serialised answer as it was stored, so the hit path parses the request,
builds the key, and does one dictionary lookup: no protobuf encoding, no await on anything remote.
An entry (either level) that may hold an item deleted since it was stored is a miss (server/edge/deletes.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc

from server import metrics
from server.backends.base import Cache
from server.backends.single_flight import SingleFlight
from server.config import EdgeConfig
from server.edge.deletes import RecentDeletes
from server.edge.entry import Entry, entry_size
from server.edge.keys import KeyParts, key_of_user, normalise, time_bucket, user_key_prefix
from server.edge.lru import ByteLRU
from server.edge.origin import Origin, OriginError
from server.edge.versions import UserVersions
from server.experiments.assignment import OUTSIDE
from server.experiments.registry import ExperimentRegistry
from server.gen.recd.v1 import recommender_pb2

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RECOMMEND_METHOD = "/recd.v1.Recommender/Recommend"


class EdgeCache:
    def __init__(
        self,
        config: EdgeConfig,
        origin: Origin,
        shared: Cache | None = None,
        clock: Clock = time.time,
        deletes: RecentDeletes | None = None,
        experiments: ExperimentRegistry | None = None,
    ) -> None:
        self._config = config
        self._experiments = experiments
        self._origin = origin
        self._shared = shared
        # Fed by a DeleteWatch (server.py); without one it stays empty and admits everything.
        self.deletes = deletes or RecentDeletes(
            config.max_ttl_s + config.stale_grace_s + config.delete_margin_s,
            config.delete_margin_s,
            config.max_deleted_ids,
            clock=clock,
        )
        # Wall clock: entry times are compared by every replica that reads them from Redis.
        self._clock = clock
        self.l1: ByteLRU[Entry] = ByteLRU(config.cache.max_bytes, entry_size)
        # A version record must outlive every entry made under the version before it (see versions.py).
        record_ttl_s = 2.0 * (config.max_ttl_s + config.stale_grace_s)
        self.versions = UserVersions(
            shared, config.max_users, config.user_version_refresh_s, record_ttl_s, clock=clock
        )
        # Learned from origin answers not ranked by a variant's own model. While origins roll out a new
        # model the learned version follows the latest answer; keys then differ between the two models,
        # which costs hits, never correctness.
        self.model_version = ""
        self.origin_calls = 0
        self._fills: SingleFlight[bytes] = SingleFlight()
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()
        # Label lookups cost about as much as the rest of a hit, so the children are bound once.
        counter = metrics.EDGE_CACHE.labels
        self._l1_hit, self._l1_stale, self._l1_miss = (counter("l1", o) for o in ("hit", "stale", "miss"))
        self._l2_hit, self._l2_stale, self._l2_miss = (counter("l2", o) for o in ("hit", "stale", "miss"))
        self._l1_deleted, self._l2_deleted = counter("l1", "deleted"), counter("l2", "deleted")
        self._coalesced = counter("origin", "coalesced")

    # --- the request path ---------------------------------------------------------------------------
    async def lookup(self, request: recommender_pb2.RecommendRequest) -> KeyParts:
        user = request.user_id
        version = await self.versions.get(user)
        bucket = time_bucket(self._clock(), user, self._config.time_bucket_s)
        arm = OUTSIDE
        if self._experiments is not None:
            assigner = self._experiments.current()
            if assigner.experiments:
                arm = assigner.assign(user)
        model = arm.model_version or self.model_version
        return KeyParts(self._config.key_version, model, user, version, normalise(request), bucket, arm.tag)

    async def recommend(
        self,
        raw: bytes,
        timeout_s: float | None = None,
        parsed: recommender_pb2.RecommendRequest | None = None,
    ) -> bytes:
        """The serialised RecommendResponse for the serialised RecommendRequest `raw` (`parsed`: `raw`
        already parsed, by a caller that checked it).

        `timeout_s` bounds this caller's wait only: a fill other callers share runs on the edge's own
        origin timeout, so one impatient caller cannot fail everyone waiting on the same key.
        Raises OriginError (with the origin's status) when the answer had to come from an origin and
        could not.
        """
        request = parsed if parsed is not None else recommender_pb2.RecommendRequest.FromString(raw)
        parts = await self.lookup(request)
        key = parts.key()
        now = self._clock()
        entry = self.l1.get(key)
        if entry is not None and not self.deletes.admits(entry):
            self._l1_deleted.inc()
            self.l1.pop(key)
            entry = None
        if entry is not None:
            if entry.is_fresh(now):
                self._l1_hit.inc()
                return entry.response
            if entry.is_usable(now):
                self._l1_stale.inc()
                self._refresh_soon(key, raw, parts, check_shared=True)
                return entry.response
            self.l1.pop(key)
        self._l1_miss.inc()
        if self._fills.in_flight(key):
            self._coalesced.inc()
        fill = self._fills.run(key, lambda: self._fill(key, raw, parts))
        if timeout_s is None:
            return await fill
        try:
            return await asyncio.wait_for(fill, timeout_s)
        except TimeoutError:
            raise OriginError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the edge's origin did not answer in time"
            ) from None

    async def invalidate_users(self, user_ids: Iterable[str]) -> None:
        """After a write about these users: their cached answers stop matching, nobody else's."""
        await self.versions.bump(user_ids)

    async def erase_users(self, user_ids: Iterable[str]) -> None:
        """After an erasure: as a write, and the users' answers also leave this process's memory (a scan
        of the first level, as erasures are rare). Entries in the shared level stop matching at once and
        expire there within their TTL and grace."""
        users = list(dict.fromkeys(user_ids))
        await self.versions.bump(users)
        prefixes = tuple(user_key_prefix(self._config.key_version, u) for u in users)
        self.l1.pop_matching(lambda key: any(key_of_user(key, p) for p in prefixes))

    # --- fills and refreshes ------------------------------------------------------------------------
    async def _fill(self, key: str, raw: bytes, parts: KeyParts) -> bytes:
        if self._shared is not None:
            entry = await self._shared_entry(key)
            now = self._clock()
            if entry is not None and entry.is_usable(now):
                self._put_l1(key, entry)
                if entry.is_fresh(now):
                    self._l2_hit.inc()
                else:
                    self._l2_stale.inc()
                    self._refresh_soon(key, raw, parts, check_shared=False)
                return entry.response
            self._l2_miss.inc()
        return await self._from_origin(raw, parts)

    async def _shared_entry(self, key: str) -> Entry | None:
        """The shared level's entry, None when it has none or may hold a deleted item."""
        assert self._shared is not None
        blob = await self._shared.get(key)
        entry = None if blob is None else Entry.decode(blob)
        if entry is not None and not self.deletes.admits(entry):
            self._l2_deleted.inc()
            return None
        return entry

    async def _from_origin(self, raw: bytes, parts: KeyParts) -> bytes:
        self.origin_calls += 1
        answer = await self._origin.call(
            RECOMMEND_METHOD, raw, self._config.origin_timeout_ms / 1000.0, retryable=True
        )
        self._store(parts, answer)
        return answer

    def _store(self, parts: KeyParts, answer: bytes) -> None:
        response = recommender_pb2.RecommendResponse.FromString(answer)
        ttl = min(float(response.cache_ttl_seconds), self._config.max_ttl_s)
        coverage = response.coverage
        if coverage.partial or coverage.degraded_reasons:
            ttl = min(ttl, self._config.degraded_ttl_s)
        arm = ";".join(f"{e.experiment}={e.variant}" for e in response.experiments)
        if response.model_version != self.model_version and not self._overrides_model(response):
            log.info("origin model version is now %r", response.model_version)
            self.model_version = response.model_version
        if ttl <= 0:
            return
        # Under the answer's own model version and variants (they may differ from the lookup's, while
        # the edge and the origins see different experiment files); under the lookup's user version, so
        # an answer computed before a write can never be stored where post-write lookups go.
        key = parts.served_by(response.model_version, arm).key()
        now = self._clock()
        if not self.deletes.admits_items(now, (item.item_id for item in response.items)):
            # An origin that has not applied a delete yet: answer the caller, keep nothing.
            return
        entry = Entry(answer, now + ttl, now + ttl + self._config.stale_grace_s, now)
        self._put_l1(key, entry)
        if self._shared is not None:
            # In the background: the caller has its answer; the shared level is a help, not a step.
            self._spawn(self._shared.set(key, entry.encode(), ttl + self._config.stale_grace_s))

    def _overrides_model(self, response: recommender_pb2.RecommendResponse) -> bool:
        """Whether a variant of the answer ranks with a model of its own (as this edge's experiments
        say): such an answer tells nothing of the default model."""
        if not response.experiments or self._experiments is None:
            return False
        assigner = self._experiments.current()
        for served in response.experiments:
            experiment = assigner.experiment(served.experiment)
            variant = experiment.variant(served.variant) if experiment is not None else None
            if variant is None or "model_version" in variant.overrides:
                return True  # unknown here: better not to learn from it
        return False

    def _put_l1(self, key: str, entry: Entry) -> None:
        self.l1.put(key, entry)
        metrics.EDGE_L1_BYTES.set(self.l1.bytes_used)

    def _refresh_soon(self, key: str, raw: bytes, parts: KeyParts, check_shared: bool) -> None:
        """One background refresh per stale key; past max_refreshes the stale answer is served alone,
        so a burst of expiries cannot become a burst of origin calls."""
        if key in self._refreshing:
            return
        if len(self._refreshing) >= self._config.max_refreshes:
            metrics.EDGE_REFRESHES.labels("skipped").inc()
            return
        self._refreshing.add(key)
        self._spawn(self._refresh(key, raw, parts, check_shared))

    async def _refresh(self, key: str, raw: bytes, parts: KeyParts, check_shared: bool) -> None:
        try:
            if check_shared and self._shared is not None:
                # Another replica may have refreshed it already.
                entry = await self._shared_entry(key)
                if entry is not None and entry.is_fresh(self._clock()):
                    self._put_l1(key, entry)
                    metrics.EDGE_REFRESHES.labels("shared").inc()
                    return
            await self._from_origin(raw, parts)
            metrics.EDGE_REFRESHES.labels("ok").inc()
        except Exception as exc:
            # The stale entry stays servable until its grace ends; the next stale hit tries again.
            metrics.EDGE_REFRESHES.labels("failed").inc()
            log.debug("refresh of %s failed: %s", key, exc)
        finally:
            self._refreshing.discard(key)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        # Held here: the event loop keeps only weak references to tasks.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- life cycle ---------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Waits for background work (refreshes, shared-level writes): for tests and benchmarks."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*list(self._background), return_exceptions=True)
        self.l1.clear()
