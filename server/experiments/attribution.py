"""Attribution: which served answer an interaction follows, hence which variants it counts for.

Off the write path: RecordInteractions queues what it recorded (durable already) and returns; batches of
interactions are attributed every `exposures.flush_interval_ms`, with one read of their users' exposures
(plus the answers this frontend has not written yet) and one write of the outcomes. An attribution lost
to a failure, the queue bound or a crash is counted; the interactions themselves are never affected.

An interaction is attributed to the newest exposure (answer served to that user) that holds its item and
was served within `experiments.attribution_window_s` before it. An exposure a little after the
interaction still counts (CLOCK_TOLERANCE_MS): the interaction's time comes from the caller's clock, the
exposure's from the frontend's. Answers logged outside every experiment (write-back only) attribute
nothing. One Outcome per attributed interaction is kept in the profile store for the report, and the
per-variant action counters count it here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from server import metrics
from server.backends.base import ProfileStore
from server.config import ExperimentsConfig, ExposuresConfig
from server.domain import Exposure, Interaction, Outcome
from server.experiments.assignment import parse_tag
from server.experiments.batches import BatchQueue
from server.experiments.exposures import ExposureLog

log = logging.getLogger(__name__)

CLOCK_TOLERANCE_MS = 5_000


def attribute(
    interactions: Sequence[Interaction], exposures: Mapping[str, Sequence[Exposure]], window_ms: int
) -> list[Outcome]:
    """`exposures`: each user's, newest first."""
    outcomes = []
    for x in interactions:
        for e in exposures.get(x.user_id, ()):
            age = x.timestamp_ms - e.served_at_ms
            if age < -CLOCK_TOLERANCE_MS:
                continue  # served after the interaction: a newer answer cannot have caused it
            if age > window_ms:
                break  # newest first: every later one is older still
            if e.arm and x.item_id in e.item_ids:
                outcomes.append(
                    Outcome(x.user_id, x.item_id, x.action, x.weight, x.timestamp_ms, e.served_at_ms, e.arm)
                )
                break
    return outcomes


def count(outcomes: Sequence[Outcome], outcome_actions: Sequence[str]) -> None:
    """The per-variant action counters; actions not in `outcome_actions` count as "other"."""
    named = set(outcome_actions)
    for o in outcomes:
        action = o.action if o.action in named else "other"
        for experiment, variant in parse_tag(o.arm):
            metrics.EXPERIMENT_ACTIONS.labels(experiment, variant, action).inc()


class Attributor:
    def __init__(
        self,
        store: ProfileStore,
        exposures: ExposureLog,
        experiments: ExperimentsConfig,
        config: ExposuresConfig,
        timeout_s: float,
    ) -> None:
        self._store = store
        self._exposures = exposures
        self._window_ms = int(experiments.attribution_window_s * 1000)
        self._actions = experiments.outcome_actions
        self._config = config
        self._timeout_s = timeout_s
        self._batches: BatchQueue[Interaction] = BatchQueue(
            self._attribute,
            config.flush_interval_ms / 1000.0,
            config.queue_max,
            metrics.ATTRIBUTION_ERRORS.inc,
            "attribution",
        )

    def add(self, interactions: Sequence[Interaction]) -> None:
        """Interactions just recorded, to attribute soon. Never blocks, never raises."""
        for x in interactions:
            self._batches.put(x)

    async def flush(self) -> None:
        await self._batches.flush()

    async def forget(self, user_ids: Sequence[str]) -> None:
        """Before an erasure: no outcome of these users is written after it."""
        users = set(user_ids)
        self._batches.drop(lambda x: x.user_id in users)
        await self._batches.settled(lambda x: x.user_id in users)

    async def close(self) -> None:
        await self._batches.close()

    async def _attribute(self, interactions: list[Interaction]) -> None:
        users = list(dict.fromkeys(x.user_id for x in interactions))
        since_ms = min(x.timestamp_ms for x in interactions) - self._window_ms
        try:
            stored = await self._store.read_exposures(
                users, since_ms, self._config.keep_per_user, self._timeout_s
            )
            served = self._exposures.pending(users)  # answers of this frontend not written yet come first
            for user, exposures in zip(users, stored, strict=True):
                served.setdefault(user, []).extend(exposures)
            outcomes = attribute(interactions, served, self._window_ms)
            if outcomes:
                await self._store.record_outcomes(outcomes, self._config.ttl_s)
                count(outcomes, self._actions)
        except Exception:
            metrics.ATTRIBUTION_ERRORS.inc(len(interactions))
            log.warning("attribution of %d interactions failed", len(interactions), exc_info=True)
