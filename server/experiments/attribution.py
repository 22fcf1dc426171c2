"""Attribution: which served answer an interaction follows, hence which variants it counts for.

An interaction is attributed to the newest exposure (answer served to that user) that holds its item and
was served within `experiments.attribution_window_s` before it. An exposure a little after the
interaction still counts (CLOCK_TOLERANCE_MS): the interaction's time comes from the caller's clock, the
exposure's from the frontend's. Answers logged outside every experiment (write-back only) attribute
nothing. One Outcome per attributed interaction is kept in the profile store for the report, and the
per-variant action counters count it here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from server import metrics
from server.domain import Exposure, Interaction, Outcome
from server.experiments.assignment import parse_tag

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
