from __future__ import annotations

import pytest

from server.domain import Interaction
from server.tools.evaluation.split import NOT_SAMPLED, ONLY_REPEATS, TOO_FEW, split_last_n


def history(user: str, items: str) -> list[Interaction]:
    """One interaction per character of `items`, one second apart, oldest first."""
    return [Interaction(user, f"i{c}", "view", 1.0, 1_000 * (t + 1)) for t, c in enumerate(items)]


@pytest.mark.parametrize(
    ("items", "holdout", "min_train", "train", "relevant", "skipped"),
    [
        # enough interactions: the last `holdout` are held out, all new items are relevant
        ("abcdefg", 2, 3, "abcde", {"if", "ig"}, None),
        # exactly holdout + min_train
        ("abcde", 2, 3, "abc", {"id", "ie"}, None),
        # one short of it
        ("abcd", 2, 3, None, None, TOO_FEW),
        # a single interaction
        ("a", 1, 1, None, None, TOO_FEW),
        # a held-out item already seen in training is not relevant
        ("abcdea", 2, 3, "abcd", {"ie"}, None),
        # only repeats held out: nothing can be hit, the user is not evaluated
        ("abcdab", 2, 3, None, None, ONLY_REPEATS),
        # a repeat inside the hold-out counts once
        ("abcdd", 2, 3, "abc", {"id"}, None),
    ],
)
def test_leave_last_n_out(
    items: str,
    holdout: int,
    min_train: int,
    train: str | None,
    relevant: set[str] | None,
    skipped: str | None,
) -> None:
    split = split_last_n({"u": history("u", items)}, holdout, min_train)
    if skipped is not None:
        assert split.evaluated == [] and split.skipped == {skipped: 1}
        assert split.train["u"] == history("u", items)  # a user not evaluated keeps everything for training
        return
    (user,) = split.evaluated
    assert train is not None
    assert [x.item_id for x in user.train] == [f"i{c}" for c in train]
    assert [x.item_id for x in user.held_out] == [f"i{c}" for c in items[len(train) :]]
    assert user.relevant == relevant
    assert split.train["u"] == list(user.train)
    assert not split.skipped


def test_sampling_is_seeded_and_returns_the_rest_to_training() -> None:
    histories = {f"u{i:02d}": history(f"u{i:02d}", "abcdefgh") for i in range(20)}
    first = split_last_n(histories, 2, 3, max_users=5, seed=1)
    again = split_last_n(histories, 2, 3, max_users=5, seed=1)
    other = split_last_n(histories, 2, 3, max_users=5, seed=2)
    chosen = [u.user_id for u in first.evaluated]
    assert chosen == [u.user_id for u in again.evaluated] == sorted(chosen)
    assert chosen != [u.user_id for u in other.evaluated]
    assert first.skipped == {NOT_SAMPLED: 15}
    for user_id, train in first.train.items():
        assert len(train) == (6 if user_id in chosen else 8)
    assert len(first.training_interactions()) == 5 * 6 + 15 * 8


def test_validation_split_nests_inside_training() -> None:
    histories = {"u": history("u", "abcdefghijkl")}
    test = split_last_n(histories, 3, 2)
    validation = split_last_n(test.train, 3, 2)
    (v,) = validation.evaluated
    assert [x.item_id for x in v.held_out] == ["ig", "ih", "ii"]
    assert [x.item_id for x in validation.train["u"]] == ["ia", "ib", "ic", "id", "ie", "if"]


@pytest.mark.parametrize(("holdout", "min_train", "max_users"), [(0, 1, None), (1, 0, None), (1, 1, 0)])
def test_rejects_nonsense_arguments(holdout: int, min_train: int, max_users: int | None) -> None:
    with pytest.raises(ValueError):
        split_last_n({}, holdout, min_train, max_users)
