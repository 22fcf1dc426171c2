"""Per-user temporal hold-out: each evaluated user's last N interactions are the test, the rest training.

A user is evaluated when they have at least `holdout + min_train` interactions and at least one held-out
item they had not already interacted with in training: recommendations exclude seen items, so a
held-out repeat can never be hit and is not counted as relevant. Everyone else's whole history (and,
with `max_users`, the history of eligible users not drawn) is training data: it still shapes
popularity, the graph and the catalogue, it is only not scored.

The split is per user, not at one global instant, so training can hold other users' later events; this
is the usual leave-last-N-out and what a serving system sees for a returning user.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.domain import Interaction

TOO_FEW = "too few interactions"
ONLY_REPEATS = "held-out items all seen in training"
NOT_SAMPLED = "not drawn (--max-users)"


@dataclass(frozen=True, slots=True)
class HeldOut:
    user_id: str
    train: tuple[Interaction, ...]  # oldest first
    held_out: tuple[Interaction, ...]
    relevant: frozenset[str]  # held-out items absent from the user's training part

    @property
    def seen(self) -> frozenset[str]:
        return frozenset(x.item_id for x in self.train)


@dataclass
class Split:
    train: dict[str, list[Interaction]]  # every user's training interactions, oldest first
    evaluated: list[HeldOut]  # sorted by user id
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> users not evaluated

    def training_interactions(self) -> list[Interaction]:
        return [x for history in self.train.values() for x in history]


def split_last_n(
    histories: Mapping[str, Sequence[Interaction]],
    holdout: int,
    min_train: int,
    max_users: int | None = None,
    seed: int = 0,
) -> Split:
    """`histories`: user -> interactions oldest first. See the module docstring for who is evaluated."""
    if holdout < 1:
        raise ValueError(f"holdout must be at least 1, got {holdout}")
    if min_train < 1:
        raise ValueError(f"min_train must be at least 1, got {min_train}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be at least 1, got {max_users}")
    skipped: Counter[str] = Counter()
    candidates: dict[str, HeldOut] = {}
    for user_id in sorted(histories):
        history = histories[user_id]
        if len(history) < holdout + min_train:
            skipped[TOO_FEW] += 1
            continue
        before, held_out = tuple(history[:-holdout]), tuple(history[-holdout:])
        seen = {x.item_id for x in before}
        relevant = frozenset(x.item_id for x in held_out if x.item_id not in seen)
        if not relevant:
            skipped[ONLY_REPEATS] += 1
            continue
        candidates[user_id] = HeldOut(user_id, before, held_out, relevant)
    chosen = sorted(candidates)
    if max_users is not None and len(chosen) > max_users:
        chosen = sorted(random.Random(seed).sample(chosen, max_users))
        skipped[NOT_SAMPLED] += len(candidates) - max_users
    evaluated = [candidates[u] for u in chosen]
    train = {user_id: list(history) for user_id, history in histories.items()}
    for user in evaluated:
        train[user.user_id] = list(user.train)
    return Split(train, evaluated, skipped)
