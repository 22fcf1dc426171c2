"""Tests of server/experiments/assignment.py: assignment is a pure function of (salt, user id), uniform to
within 1% over 100,000 users, independent across salts, monotone in traffic, and overridden by the
allow-lists and the kill switch as the config documents."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pytest

from server.config import Config, ExperimentConfig, VariantConfig
from server.experiments.assignment import OUTSIDE, Arm, Assigner, parse_tag, uniforms, variant_of
from server.experiments.definitions import Experiment, parse

USERS = [f"user-{n}" for n in range(100_000)]
BASE = Config(data_dir=None)
K = TypeVar("K")


def make(
    name: str,
    weights: Sequence[float] = (1.0, 1.0),
    *,
    traffic: float = 1.0,
    salt: str = "",
    enabled: bool = True,
    users: Mapping[int, list[str]] | None = None,
    overrides: Mapping[int, dict[str, Any]] | None = None,
) -> Experiment:
    """One checked experiment with variants v0, v1, ... of these weights."""
    variants = [
        VariantConfig(f"v{i}", w, dict((overrides or {}).get(i, {})), list((users or {}).get(i, [])))
        for i, w in enumerate(weights)
    ]
    (experiment,) = parse([ExperimentConfig(name, salt, traffic, enabled, variants)], BASE, None, "t")
    return experiment


def shares(assigned: Sequence[K]) -> dict[K, float]:
    counts = Counter(assigned)
    return {k: c / len(assigned) for k, c in counts.items()}


def test_uniforms_are_pinned() -> None:
    """The hash is part of the contract: frontends of two releases serving at once (a rolling deploy)
    and every restart must agree, so a change to it is a change every running experiment would see."""
    assert uniforms("s", "u") == (0.1958584422126671, 0.36036641122608754)
    assert uniforms("checkout", "user-42") == (0.46217592725644646, 0.671371408121217)
    a, b = uniforms("salt", "someone")
    assert 0.0 <= a < 1.0 and 0.0 <= b < 1.0 and a != b


def test_assignment_is_stable_across_assigners() -> None:
    """Two processes (frontends, or one process before and after a restart) parse the same config on
    their own and must give every user the same arm."""
    configs = lambda: [  # each call builds fresh objects, as a second process would
        make("colour", (1, 2), traffic=0.7),
        make("ranker", (1, 1, 1), traffic=0.4, overrides={1: {"ef_search": 40}, 2: {"ef_search": 80}}),
    ]
    first, second = Assigner(configs()), Assigner(configs())
    for user in USERS[:20_000]:
        a, b = first.assign(user), second.assign(user)
        assert a.pairs == b.pairs and a.tag == b.tag and a.pipeline_key == b.pipeline_key
    # The same user again on the same assigner: the same (cached) arm.
    assert first.assign("user-7") is first.assign("user-7")


def test_uniform_within_one_percent_over_100k_users() -> None:
    e = make("uniform", (1, 1, 2), traffic=0.5)
    assigned = [variant_of(e, u) for u in USERS]
    of_all = shares(assigned)
    assert of_all[None] == pytest.approx(0.5, abs=0.01)
    for name, expected in (("v0", 0.125), ("v1", 0.125), ("v2", 0.25)):
        assert of_all[name] == pytest.approx(expected, abs=0.01), name
        variant = e.variant(name)
        assert variant is not None and of_all[name] == pytest.approx(0.5 * variant.share, abs=0.01)
    inside = [a for a in assigned if a is not None]
    of_inside = shares(inside)
    for name, expected in (("v0", 0.25), ("v1", 0.25), ("v2", 0.5)):
        assert of_inside[name] == pytest.approx(expected, abs=0.01), name


@pytest.mark.parametrize("traffic", [0.0, 1.0])
def test_traffic_bounds_are_exact(traffic: float) -> None:
    e = make("edges", traffic=traffic)
    inside = sum(variant_of(e, u) is not None for u in USERS[:10_000])
    assert inside == (10_000 if traffic == 1.0 else 0)


def test_experiments_with_different_salts_are_independent() -> None:
    """Being in one experiment (or one of its variants) says nothing about another: every joint share
    is the product of the marginals, within 1%."""
    first = make("first", (1, 1, 2), traffic=0.6)
    second = make("second", (1, 3), traffic=0.5)
    a = [variant_of(first, u) for u in USERS]
    b = [variant_of(second, u) for u in USERS]
    joint = shares(list(zip(a, b, strict=True)))
    sa, sb = shares(a), shares(b)
    for x, y in itertools.product(sa, sb):
        assert joint.get((x, y), 0.0) == pytest.approx(sa[x] * sb[y], abs=0.01), (x, y)


def test_participation_and_variant_draws_are_independent() -> None:
    """Within one experiment the two uniforms are independent: the variant mix is the same among users
    with a low participation draw as among users with a high one (so raising traffic adds users in
    the configured proportions)."""
    low, high = Counter[int](), Counter[int]()
    for u in USERS:
        takes_part, pick = uniforms("independence", u)
        (low if takes_part < 0.5 else high)[int(pick * 4)] += 1
    for bucket in range(4):
        assert low[bucket] / low.total() == pytest.approx(0.25, abs=0.01)
        assert high[bucket] / high.total() == pytest.approx(0.25, abs=0.01)


def test_same_salt_means_the_same_draws() -> None:
    """What sharing a salt means: the same two uniforms per user, so two experiments with one salt take
    the same users (the smaller traffic's users are all in the larger's) and, with the same weights,
    put each user in the same position of variant. It is how one keeps a population across a
    redefinition; experiments meant to be independent need different salts (the name, by default)."""
    a = make("a", (1, 1), traffic=0.3, salt="shared")
    b = make("b", (1, 1), traffic=0.6, salt="shared")
    c = make("c", (1, 1), traffic=0.3, salt="")  # salt "" is the name: different draws from a's
    together = apart = 0
    for u in USERS[:20_000]:
        va, vb, vc = variant_of(a, u), variant_of(b, u), variant_of(c, u)
        if va is not None:
            assert vb == va  # in a => in b, same variant
        together += va is not None and va == vc
        apart += (va is None) != (vc is None)
    assert apart > 5000  # about 2 * 0.3 * 0.7 of them: c draws on its own
    assert together == pytest.approx(20_000 * 0.3 * 0.3 * 0.5, rel=0.1)
    # The salt defaults to the name: "x" with salt "" draws as "y" with salt "x".
    x, y = make("x", traffic=0.5), make("y", traffic=0.5, salt="x")
    assert all(variant_of(x, u) == variant_of(y, u) for u in USERS[:5000])


def test_raising_traffic_only_adds_users() -> None:
    before = make("ramp", (1, 1, 2), traffic=0.2)
    after = make("ramp", (1, 1, 2), traffic=0.6)
    added = 0
    for u in USERS[:50_000]:
        was, now = variant_of(before, u), variant_of(after, u)
        if was is not None:
            assert now == was, u  # nobody already in changes variant
        else:
            added += now is not None
    assert added == pytest.approx(50_000 * 0.4, rel=0.05)


def test_allow_list_forces_a_variant_even_outside_traffic() -> None:
    e = make("qa", (1, 1), traffic=0.0, users={1: ["qa-1", "qa-2"]})
    assert variant_of(e, "qa-1") == "v1" and variant_of(e, "qa-2") == "v1"
    assert variant_of(e, "user-1") is None
    # A user whose hash picks v0 is still served v1 when listed there.
    full = make("full", (1, 1), traffic=1.0)
    picked_v0 = next(u for u in USERS if variant_of(full, u) == "v0")
    forced = make("full", (1, 1), traffic=1.0, users={1: [picked_v0]})
    assert variant_of(forced, picked_v0) == "v1"
    assert Assigner([e]).assign("qa-2").pairs == (("qa", "v1"),)


def test_kill_switch_assigns_nobody_not_even_allow_listed_users() -> None:
    killed = make("killed", (1, 1), traffic=1.0, enabled=False, users={0: ["qa-1"]})
    assert all(variant_of(killed, u) is None for u in USERS[:5000])
    assert variant_of(killed, "qa-1") is None
    assigner = Assigner([killed])
    assert assigner.assign("qa-1") is OUTSIDE and assigner.assign("user-3") is OUTSIDE
    assert OUTSIDE.tag == "" and OUTSIDE.overrides == {} and OUTSIDE.model_version is None


def test_arm_tag_round_trips_through_parse_tag() -> None:
    arm = Arm((("colour", "blue"), ("ranker", "v2-model")), {"model_version": "v2"})
    assert arm.tag == "colour=blue;ranker=v2-model"
    assert parse_tag(arm.tag) == list(arm.pairs)
    assert parse_tag("") == [] and OUTSIDE.tag == ""
    assert parse_tag(Arm((("only", "one"),)).tag) == [("only", "one")]
    assert arm.model_version == "v2"


def test_assigner_arms_name_experiments_in_order_and_merge_overrides() -> None:
    a = make("a", (1,), overrides={0: {"ef_search": 40}})
    b = make("b", (1,), overrides={0: {"model_version": "v2", "diversity": 0.3}})
    arm = Assigner([a, b]).assign("anyone")
    assert arm.pairs == (("a", "v0"), ("b", "v0"))
    assert arm.tag == "a=v0;b=v0" and parse_tag(arm.tag) == list(arm.pairs)
    assert dict(arm.overrides) == {"ef_search": 40, "model_version": "v2", "diversity": 0.3}
    assert arm.model_version == "v2"
    assigner = Assigner([a, b])
    assert assigner.experiment("b") is b and assigner.experiment("nope") is None


def test_arms_with_the_same_overrides_share_a_pipeline_key() -> None:
    """Variants of different experiments (or a variant and the control) that change the same
    pipeline parameters to the same values batch together; any difference in a value gives another key;
    the parameters that ride on each request (model, diversity, retrieval) never split a pipeline."""
    first = Arm((("a", "x"),), {"popular_k": 40, "sources": ["ann", "popular"]})
    second = Arm((("b", "y"),), {"sources": ["ann", "popular"], "popular_k": 40})  # another order
    assert first.pipeline_key == second.pipeline_key
    assert first.tag != second.tag
    assert (
        Arm((("a", "z"),), {"popular_k": 41, "sources": ["ann", "popular"]}).pipeline_key
        != first.pipeline_key
    )
    assert Arm((("a", "c"),), {}).pipeline_key == OUTSIDE.pipeline_key
    per_request = {"model_version": "m2", "diversity": 0.3, "ef_search": 40, "ann_k": 50, "shard_k": 8}
    assert Arm((("a", "r"),), per_request).pipeline_key == OUTSIDE.pipeline_key
    assert Arm((("a", "r"),), per_request).ann_overrides == {"ef_search": 40, "ann_k": 50, "shard_k": 8}
    control = make("e", (1, 1), overrides={1: {"popular_k": 40}})
    assigner = Assigner([control])
    arms = {assigner.assign(u).pairs: assigner.assign(u) for u in USERS[:200]}
    keys = {pairs[0][1]: arm.pipeline_key for pairs, arm in arms.items()}
    assert keys["v0"] == OUTSIDE.pipeline_key and keys["v1"] != keys["v0"]


def test_zero_weight_variant_gets_nobody_but_its_allow_list() -> None:
    e = make("ramp", (1, 0), users={1: ["qa"]})
    assert e.bounds == (1.0, 1.0)
    assert {variant_of(e, u) for u in USERS[:10_000]} == {"v0"}
    assert variant_of(e, "qa") == "v1"
