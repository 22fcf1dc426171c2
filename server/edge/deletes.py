"""What the edge knows of recent catalogue deletes, and the stream it learns them from.

A cached answer is an origin's answer at the time it was stored: an item deleted since may be in it. The
edge follows one origin's Catalog.WatchDeletes (any one will do: every frontend applies every delete,
server/catalog/deletions.py) and remembers each deleted id with the time it heard of it, for as long as an
answer stored before then may still be served (max_ttl_s + stale_grace_s). A cached answer, in L1 or in
the shared level, is refused (a miss: the origin is asked again) when it holds an id heard of after the
answer was stored less `margin_s`, the spread of feed lag and clocks between frontends and edges (an
origin that had not applied a delete yet may have answered shortly after another one streamed it).

On a hit this costs two float comparisons while nothing was heard of since the entry was stored; only
then are the answer's item ids parsed.

What the edge cannot know, it does not trust. A gap (the origin's log did not reach back to where the edge
resumed: that frontend restarted, or its log overflowed; or the edge's own bound on ids overflowed) makes
every entry stored before the gap's end a miss. While no stream is up the edge serves from its caches as
usual (it fails open, as it does without Redis), and the deletes it missed are replayed when it resumes
from its last position, on the same origin or another one.

Erasures (users erased through a frontend) come on the same streams but are each frontend's own, so
ErasureWatch follows every origin address for them and bumps the erased users' versions (below).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, Protocol

import grpc

from server import metrics
from server.edge.entry import Entry
from server.gen.recd.v1 import catalog_pb2, recommender_pb2
from server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Clock = Callable[[], float]
WATCH_DELETES_METHOD = "/recd.v1.Catalog/WatchDeletes"


class RecentDeletes:
    def __init__(self, keep_s: float, margin_s: float, max_ids: int, clock: Clock = time.time) -> None:
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self.keep_s = keep_s
        self.margin_s = margin_s
        self._max_ids = max_ids
        # Wall clock, as entries' times are: shared-level entries were stored by other edge replicas.
        self._clock = clock
        # id -> when this edge heard of its delete; oldest first.
        self._heard: OrderedDict[str, float] = OrderedDict()
        self._latest = -math.inf
        # Deletes before this time may have been missed.
        self._blind_until = -math.inf

    def __len__(self) -> int:
        return len(self._heard)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._heard

    @property
    def blind_until(self) -> float:
        return self._blind_until

    def add(self, item_ids: Iterable[str]) -> None:
        now = self._clock()
        heard = self._heard
        for item_id in item_ids:
            heard.pop(item_id, None)
            heard[item_id] = now
            self._latest = now
        self.prune(now)
        while len(heard) > self._max_ids:
            _, at = heard.popitem(last=False)
            self.blind(at, "bound")

    def blind(self, until: float, reason: str) -> None:
        """Deletes before `until` may have been missed: refuse every entry stored before it (+ margin)."""
        if until > self._blind_until:
            self._blind_until = until
            metrics.EDGE_DELETES_GAPS.labels(reason).inc()
            log.info(
                "deletes before %.3f may have been missed (%s): older cached answers are refused",
                until,
                reason,
            )

    def prune(self, now: float | None = None) -> None:
        """Forgets ids heard of so long ago that no servable entry can predate them."""
        horizon = (self._clock() if now is None else now) - self.keep_s
        heard = self._heard
        while heard and next(iter(heard.values())) < horizon:
            heard.popitem(last=False)
        metrics.EDGE_RECENT_DELETES.set(len(heard))

    def admits(self, entry: Entry) -> bool:
        """False when the entry may hold an item deleted since it was stored."""
        threshold = entry.stored_at - self.margin_s
        if self._blind_until >= threshold:
            return False
        if self._latest < threshold:
            return True
        items = recommender_pb2.RecommendResponse.FromString(entry.response).items
        return self._clean((item.item_id for item in items), threshold)

    def admits_items(self, stored_at: float, item_ids: Iterable[str]) -> bool:
        """admits() for an answer already parsed."""
        threshold = stored_at - self.margin_s
        if self._blind_until >= threshold:
            return False
        return self._latest < threshold or self._clean(item_ids, threshold)

    def _clean(self, item_ids: Iterable[str], threshold: float) -> bool:
        heard = self._heard
        return not any(heard.get(item_id, -math.inf) >= threshold for item_id in item_ids)


class StreamSource(Protocol):
    """What the watch needs of the origins (server/edge/origin.py OriginPool)."""

    @property
    def addresses(self) -> list[str]: ...

    def stream(
        self, method: str, request: bytes, exclude: frozenset[str] = frozenset()
    ) -> tuple[str, grpc.aio.UnaryStreamCall]: ...


class _ShortLog(Exception):
    """This origin's log does not reach back to where the watch resumes; another origin's may."""


class DeleteWatch:
    """Feeds RecentDeletes from an origin's WatchDeletes stream, resumed with backoff on any origin.

    A gap is accepted only when no origin can fill it: an origin whose log starts too late (it restarted
    since: every rolling deploy) is left for the next one, and only when every origin was tried (or was
    unreachable) does the watch settle for the stream it has and refuse older entries.
    """

    def __init__(
        self,
        origins: StreamSource,
        recent: RecentDeletes,
        idle_timeout_s: float = 20.0,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 5.0,
        clock: Clock = time.time,
    ) -> None:
        self._origins = origins
        self._recent = recent
        self._idle_timeout_s = idle_timeout_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # The origin-side position (ms) every delete before which this edge has heard of; None: not yet.
        self.position_ms: int | None = None
        # Set while a stream is up (it delivered its first message); `address` is its origin.
        self.connected = asyncio.Event()
        self.address: str | None = None
        self.streams_opened = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    def _since_ms(self) -> int:
        if self.position_ms is None:
            # Everything an entry still servable may predate.
            return max(1, int((self._clock() - self._recent.keep_s) * 1000))
        # Another frontend applied the same deletes a little earlier or later, by its own clock.
        return max(1, self.position_ms - int(self._recent.margin_s * 1000))

    async def _run(self) -> None:
        failures = 0
        # Origins tried since the last stream was accepted: short logs and unreachable ones.
        tried: set[str] = set()
        while True:
            since_ms = self._since_ms()
            request = catalog_pb2.WatchDeletesRequest(since_ms=since_ms).SerializeToString()
            address, call = self._origins.stream(WATCH_DELETES_METHOD, request, frozenset(tried))
            self.streams_opened += 1
            delivered = False
            try:
                delivered = await self._consume(call, address, since_ms, tried)
                log.info("deletes stream from %s ended; resuming", address)
            except _ShortLog:
                tried.add(address)
                continue  # at once: the next origin is a different one
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    # Our since_ms is ahead of that frontend's clock: clocks are off by more than a minute.
                    self.position_ms = None
                    log.warning("deletes stream refused by %s (check the clocks): %s", address, exc.details())
                else:
                    log.info("deletes stream from %s failed: %s %s", address, exc.code().name, exc.details())
            except TimeoutError:
                log.info("deletes stream from %s silent for %.0f s; resuming", address, self._idle_timeout_s)
            except Exception:
                # Whatever it was (a message that does not parse...), the watch must go on.
                log.exception("deletes stream from %s broke; resuming", address)
            finally:
                call.cancel()
                self.connected.clear()
                self.address = None
                metrics.EDGE_DELETES_WATCHED.set(0)
            # The next try goes to another origin, if there is one: this one is stopping or unreachable.
            tried = {address}
            failures = 0 if delivered else failures + 1
            delay = min(self._backoff_max_s, self._backoff_min_s * 2 ** min(failures, 16))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _consume(
        self, call: grpc.aio.UnaryStreamCall, address: str, since_ms: int, tried: set[str]
    ) -> bool:
        """Reads the stream until it ends (True if it delivered anything); raises on errors, and
        _ShortLog on a gap that an origin not yet tried may fill."""
        known_ms = since_ms
        delivered = False
        while True:
            raw = await asyncio.wait_for(call.read(), self._idle_timeout_s)
            if raw is grpc.aio.EOF:
                return delivered
            message = catalog_pb2.DeletedItems.FromString(raw)
            if message.covers_from_ms > known_ms:
                if set(self._origins.addresses) - tried - {address}:
                    raise _ShortLog
                # Deletes between what we know and what this log holds are lost to us.
                self._recent.blind(message.covers_from_ms / 1000.0, "stream")
            if not delivered:
                delivered = True
                tried.clear()
                self.address = address
                self.connected.set()
                metrics.EDGE_DELETES_WATCHED.set(1)
            if message.item_ids:
                self._recent.add(message.item_ids)
            else:
                self._recent.prune()
            known_ms = max(known_ms, message.position_ms)
            self.position_ms = known_ms


# How far the first message of a stream may be trusted when its log starts after the position asked for:
# "clean": the last stream from this address ended cleanly, so the log is a new process's, which lost
# nothing; "new": an address that appeared while the watch ran, whose whole log (if it dropped nothing)
# is all that process ever took; "strict": anything else (the watch's start, a broken stream).
_Trust = Literal["clean", "new", "strict"]


def _whole(message: catalog_pb2.DeletedItems, trust: _Trust) -> bool:
    if trust == "clean":
        return True
    return trust == "new" and message.started_ms > 0 and message.covers_from_ms <= message.started_ms


class ErasureWatch:
    """Follows every origin's WatchDeletes for the users erased through it, and makes their cached answers
    stop matching (`erase`: the edge cache's erase_users, as a DeleteUser through the edge does).

    Deletes reach every frontend by the shards' change feed, erasures do not: each frontend streams only
    its own, so one stream per origin address, each resumed on that address only, following the
    addresses as they are resolved. A user erased again on a replay is only bumped again (one miss).

    Gaps: a stream that ended cleanly sent every erasure its process acknowledged (a stopping frontend
    refuses erasures once its log is closed, server/catalog/deletions.py), so the log of the process
    that follows it at that address may start late without loss; an address that appears while the watch
    runs (a new pod) is followed from its process's start, so its log is whole unless it dropped some
    (started_ms). Rolling deploys and scale-outs cost nothing. Otherwise (the watch's start, a broken
    stream, a log past its bound) a log that does not reach back to the edge's position may have lost
    erasures: entries stored before its start are refused.
    """

    def __init__(
        self,
        origins: StreamSource,
        erase: Callable[[list[str]], Awaitable[None]],
        recent: RecentDeletes,
        idle_timeout_s: float = 20.0,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 5.0,
        rescan_s: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        self._origins = origins
        self._erase = erase
        self._recent = recent
        self._idle_timeout_s = idle_timeout_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._rescan_s = rescan_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._followers: dict[str, asyncio.Task[None]] = {}
        # Per address: the origin-side position (ms) every erasure before which this edge has heard of.
        self.positions: dict[str, int] = {}
        # Addresses whose stream is up (it delivered its first message).
        self.connected: set[str] = set()
        self.erased = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait([self._task, *self._followers.values()])
        self._task = None
        self._followers.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first_pass = True
        while True:
            wanted = set(self._origins.addresses)
            for address in wanted - self._followers.keys():
                # An address that appears later is a new frontend (or pod), followed from its birth.
                new = not first_pass and address not in self.positions
                self._followers[address] = loop.create_task(self._follow(address, "new" if new else "strict"))
            first_pass = False
            for address in list(self._followers):
                task = self._followers[address]
                if address not in wanted:
                    task.cancel()
                    del self._followers[address]
                    self.positions.pop(address, None)
                    self.connected.discard(address)
                elif task.done():
                    del self._followers[address]  # started again on the next pass, from its position
            await asyncio.sleep(self._rescan_s)

    def _since_ms(self, address: str) -> int:
        position = self.positions.get(address)
        if position is None:
            # Everything an entry still servable may predate.
            return max(1, int((self._clock() - self._recent.keep_s) * 1000))
        # A replay of the last moments, as DeleteWatch does: positions are that frontend's clock.
        return max(1, position - int(self._recent.margin_s * 1000))

    async def _follow(self, address: str, trust: _Trust) -> None:
        failures = 0
        while address in self._origins.addresses:
            since_ms = self._since_ms(address)
            request = catalog_pb2.WatchDeletesRequest(since_ms=since_ms).SerializeToString()
            others = frozenset(a for a in self._origins.addresses if a != address)
            got, call = self._origins.stream(WATCH_DELETES_METHOD, request, others)
            ended_cleanly = False
            try:
                if got != address:
                    return  # the address went between the check and the call
                await self._consume(call, address, since_ms, trust)
                ended_cleanly = True
                log.info("erasures stream from %s ended; resuming", address)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    self.positions.pop(address, None)
                    log.warning(
                        "erasures stream refused by %s (check the clocks): %s", address, exc.details()
                    )
                else:
                    log.info("erasures stream from %s failed: %s %s", address, exc.code().name, exc.details())
            except TimeoutError:
                log.info("erasures stream from %s silent for %.0f s; resuming", address, self._idle_timeout_s)
            except Exception:
                log.exception("erasures stream from %s broke; resuming", address)
            finally:
                call.cancel()
                delivered = address in self.connected
                self.connected.discard(address)
            # A stream that delivered nothing (the address is down while its frontend restarts) says
            # nothing of what may have been missed: the last stream's end still stands.
            if delivered or ended_cleanly:
                trust = "clean" if ended_cleanly else "strict"
            failures = 0 if delivered else failures + 1
            delay = min(self._backoff_max_s, self._backoff_min_s * 2 ** min(failures, 16))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _consume(
        self, call: grpc.aio.UnaryStreamCall, address: str, since_ms: int, trust: _Trust
    ) -> None:
        """Reads the stream until it ends cleanly; raises on errors. `address` is in `connected` once the
        stream delivered a message. `trust`: whether a log that starts late may be taken as whole (above)."""
        known_ms = since_ms
        delivered = False
        while True:
            raw = await asyncio.wait_for(call.read(), self._idle_timeout_s)
            if raw is grpc.aio.EOF:
                return
            message = catalog_pb2.DeletedItems.FromString(raw)
            if message.covers_from_ms > known_ms and (delivered or not _whole(message, trust)):
                # Erasures through this origin between what we know and what its log holds are lost to us.
                self._recent.blind(message.covers_from_ms / 1000.0, "erasures")
            if not delivered:
                delivered = True
                self.connected.add(address)
            if message.erased_user_ids:
                users = list(dict.fromkeys(message.erased_user_ids))
                await self._erase(users)
                self.erased += len(users)
            known_ms = max(known_ms, message.position_ms)
            self.positions[address] = known_ms
