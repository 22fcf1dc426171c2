from __future__ import annotations

import math

import pytest

from server.domain import Interaction
from server.tools.evaluation.baselines import popularity_lists
from server.tools.evaluation.metrics import hit_rate, ndcg, recall, summarise
from server.tools.evaluation.split import HeldOut


def log2(x: float) -> float:
    return math.log2(x)


@pytest.mark.parametrize(
    ("ranked", "relevant", "k", "hr", "nd", "rc"),
    [
        # the only relevant item first: perfect
        ("abc", "a", 3, 1.0, 1.0, 1.0),
        # at rank 2: DCG 1/log2(3), ideal 1
        ("bac", "a", 3, 1.0, 1 / log2(3), 1.0),
        # outside the top k
        ("bca", "a", 2, 0.0, 0.0, 0.0),
        # two relevant at ranks 1 and 3: (1 + 1/log2(4)) / (1 + 1/log2(3))
        ("abc", "ac", 3, 1.0, (1 + 1 / 2) / (1 + 1 / log2(3)), 1.0),
        # three relevant, k = 2, one hit at rank 2: ideal has min(k, 3) = 2 hits
        ("xa", "abc", 2, 1.0, (1 / log2(3)) / (1 + 1 / log2(3)), 1 / 3),
        # nothing relevant recommended
        ("xyz", "ab", 3, 0.0, 0.0, 0.0),
        # an empty list
        ("", "a", 3, 0.0, 0.0, 0.0),
    ],
)
def test_hand_computed(ranked: str, relevant: str, k: int, hr: float, nd: float, rc: float) -> None:
    lst, rel = list(ranked), set(relevant)
    assert hit_rate(lst, rel, k) == hr
    assert ndcg(lst, rel, k) == pytest.approx(nd)
    assert recall(lst, rel, k) == pytest.approx(rc)


def held_out(user: str, seen: str, relevant: str) -> HeldOut:
    train = tuple(Interaction(user, c, "view", 1.0, t + 1) for t, c in enumerate(seen))
    return HeldOut(user, train, (), frozenset(relevant))


def test_summary_averages_users_and_counts_seen_slots() -> None:
    users = [held_out("u1", "xy", "a"), held_out("u2", "z", "b")]
    lists = {"u1": ["a", "x"], "u2": ["c", "d"]}  # u1 hits at rank 1 and gets one seen item; u2 misses
    q = summarise("t", lists, users, 2, catalogue_size=10)
    assert q.users == 2
    assert q.hr == 0.5 and q.ndcg == 0.5 and q.recall == 0.5
    assert q.distinct_items == 4 and q.coverage == pytest.approx(0.4)
    assert q.seen_share == pytest.approx(1 / 4)
    assert q.short_answers == 0


def test_summary_counts_a_missing_answer_as_empty_and_short() -> None:
    q = summarise("t", {}, [held_out("u1", "x", "a")], 3, catalogue_size=5)
    assert q.hr == 0.0 and q.short_answers == 1 and q.seen_share == 0.0


def test_popularity_baseline_skips_seen_items_and_breaks_ties_by_id() -> None:
    train = [Interaction(u, item, "view", 1.0, 1) for u, item in ("1a", "2a", "3a", "1b", "2b", "1d", "2c")]
    users = [held_out("1", "a", "c"), held_out("9", "", "b")]
    lists = popularity_lists(train, users, 3)
    assert lists["1"] == ["b", "c", "d"]  # a is seen; c and d tie at one interaction, c first
    assert lists["9"] == ["a", "b", "c"]
