"""Tests of server/experiments/definitions.py: every malformed experiment is refused with a message saying
where and what to fix, checked against the config's own validation, and config_for applies a variant's
overrides to a copy of the config only."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest

from server.config import Config, ConfigError, ExperimentConfig, VariantConfig, config_to_dict
from server.experiments.definitions import OVERRIDES, config_for, overrides_key, parse

BASE = Config(data_dir=None)


def experiment(
    name: str = "exp", *overrides: dict[str, Any], enabled: bool = True, traffic: float = 1.0
) -> ExperimentConfig:
    """An experiment with a control and one variant per overrides mapping."""
    variants = [VariantConfig("control")] + [
        VariantConfig(f"v{i}", overrides=o) for i, o in enumerate(overrides, 1)
    ]
    return ExperimentConfig(name, traffic=traffic, enabled=enabled, variants=variants)


def refusal(configs: Sequence[ExperimentConfig], loaded: Sequence[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(configs, BASE, loaded, "experiments")
    return str(info.value)


def test_a_valid_experiment_is_built_with_normalised_shares() -> None:
    c = ExperimentConfig(
        "ranker",
        traffic=0.5,
        variants=[
            VariantConfig("control", 1.0),
            VariantConfig("wide", 3.0, {"ef_search": 64, "sources": ["ann", "popular"]}, ["qa"]),
        ],
    )
    (e,) = parse([c], BASE, ["v1"], "experiments")
    assert (e.name, e.salt, e.traffic, e.enabled) == ("ranker", "ranker", 0.5, True)
    assert [v.name for v in e.variants] == ["control", "wide"]
    assert [v.share for v in e.variants] == [0.25, 0.75] and e.bounds == (0.25, 1.0)
    wide = e.variant("wide")
    assert wide is not None and wide.users == frozenset({"qa"})
    assert e.variant("nope") is None
    # The definition is copied: editing the config afterwards does not reach the experiment.
    c.variants[1].overrides["ef_search"] = 1
    assert e.variants[1].overrides["ef_search"] == 64


def test_explicit_salt_is_kept() -> None:
    (e,) = parse([ExperimentConfig("e", salt="s2", variants=[VariantConfig("a")])], BASE, None, "x")
    assert e.salt == "s2"


def test_unknown_override_is_refused_with_the_known_ones() -> None:
    message = refusal([experiment("exp", {"ef_serch": 40})])
    assert "experiments[0].variants[1].overrides" in message
    assert "ef_serch" in message and "ef_search" in message  # the typo and the known names


def test_override_of_the_wrong_type_is_refused() -> None:
    message = refusal([experiment("exp", {"ef_search": "high"})])
    assert "experiments[0].variants[1].overrides" in message
    assert "shards.index.ef_search" in message and "'high'" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"sources": ["nope"]}, "'nope'"),
        ({"shard_k": 0}, "pipeline.candidates.shard_k"),
        ({"shard_k_factor": 0}, "pipeline.candidates.shard_k_factor"),
        ({"ef_search": 0}, "shards.index.ef_search"),
        ({"popular_for_warm_users": "sometimes"}, "popular_for_warm_users"),
        # The config has no lower bound on ann_k, so ann_k 0 (a variant with no ANN candidates at all)
        # passes unless Config.validate checks it: see the report of this test suite.
        ({"ann_k": 0}, "pipeline.candidates.ann_k"),
    ],
)
def test_override_with_an_invalid_value_is_refused_by_the_configs_validation(
    overrides: dict[str, Any], expected: str
) -> None:
    message = refusal([experiment("exp", overrides)])
    assert "experiments[0].variants[1].overrides" in message and expected in message


def test_every_override_name_maps_to_a_real_config_key() -> None:
    """A renamed config key would otherwise surface only when someone first overrides it."""
    raw = config_to_dict(BASE)
    for name, key in OVERRIDES.items():
        if key is None:
            continue
        node: Any = raw
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name} -> {key}: no {part}"
            node = node[part]


def test_model_version_must_be_loaded() -> None:
    message = refusal([experiment("exp", {"model_version": "v3"})], loaded=["v1", "v2"])
    assert "experiments[0].variants[1].overrides.model_version 'v3' is not loaded" in message
    assert "['v1', 'v2']" in message
    parse([experiment("exp", {"model_version": "v2"})], BASE, ["v1", "v2"], "experiments")
    # None: not checked here (the edge, which loads no models).
    parse([experiment("exp", {"model_version": "v3"})], BASE, None, "experiments")


@pytest.mark.parametrize("value", [1.5, -0.1, True, "high", float("nan")])
def test_diversity_outside_zero_one_is_refused(value: Any) -> None:
    message = refusal([experiment("exp", {"diversity": value})])
    assert "experiments[0].variants[1].overrides.diversity must be a number in [0, 1]" in message


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1])
def test_diversity_inside_zero_one_is_accepted(value: float) -> None:
    (e,) = parse([experiment("exp", {"diversity": value})], BASE, None, "experiments")
    assert e.variants[1].overrides == {"diversity": value}


def test_duplicate_experiment_names_are_refused() -> None:
    message = refusal([experiment("same"), experiment("same")])
    assert "experiments[1].name 'same' is used by another experiment" in message


def test_duplicate_variant_names_are_refused() -> None:
    c = ExperimentConfig("exp", variants=[VariantConfig("a"), VariantConfig("a")])
    assert "experiments[0].variants[1].name 'a' is used twice in exp" in refusal([c])


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ((0.0, 0.0), "the variants' weights add up to 0"),
        ((1.0, -1.0), "variants[1].weight must be a finite number >= 0"),
        ((1.0, float("inf")), "variants[1].weight must be a finite number >= 0"),
        ((1.0, float("nan")), "variants[1].weight must be a finite number >= 0"),
    ],
)
def test_bad_weights_are_refused(weights: tuple[float, float], expected: str) -> None:
    c = ExperimentConfig("exp", variants=[VariantConfig("a", weights[0]), VariantConfig("b", weights[1])])
    message = refusal([c])
    assert expected in message and "exp" in message


def test_no_variants_and_traffic_outside_zero_one_are_refused() -> None:
    assert "experiments[0] (empty) needs at least one variant" in refusal([ExperimentConfig("empty")])
    for traffic in (-0.1, 1.5, float("nan")):
        c = ExperimentConfig("exp", traffic=traffic, variants=[VariantConfig("a")])
        assert "experiments[0].traffic must be a share in [0, 1]" in refusal([c])


def test_a_user_allow_listed_in_two_variants_is_refused() -> None:
    c = ExperimentConfig(
        "exp", variants=[VariantConfig("a", users=["qa", "x"]), VariantConfig("b", users=["y", "qa"])]
    )
    assert "experiments[0]: user 'qa' is allow-listed in variants a and b" in refusal([c])
    # Listed twice in the same variant is harmless.
    ok = ExperimentConfig("exp", variants=[VariantConfig("a", users=["qa", "qa"]), VariantConfig("b")])
    parse([ok], BASE, None, "experiments")


@pytest.mark.parametrize("bad", ["a=b", "a;b", "", "x" * 65, "é" * 33])
def test_names_the_tag_could_not_carry_are_refused(bad: str) -> None:
    """'=' and ';' separate the pairs of an Arm.tag; the length bounds metric labels and keys."""
    assert "experiments[0].name must be 1..64 characters" in refusal(
        [ExperimentConfig(bad, variants=[VariantConfig("a")])]
    )
    assert "experiments[0].variants[0].name must be 1..64 characters" in refusal(
        [ExperimentConfig("exp", variants=[VariantConfig(bad)])]
    )


def test_longest_name_is_accepted() -> None:
    name = "x" * 64
    (e,) = parse([ExperimentConfig(name, variants=[VariantConfig(name)])], BASE, None, "experiments")
    assert e.name == name


def test_two_enabled_experiments_may_not_override_the_same_parameter() -> None:
    first = experiment("first", {"ef_search": 40})
    second = experiment("second", {"ef_search": 80, "ann_k": 50})
    message = refusal([first, second])
    assert "experiments first and second both override ef_search" in message
    assert "ann_k" not in message
    # Allowed while one of them is killed (the other takes every user it draws).
    disabled = experiment("second", {"ef_search": 80}, enabled=False)
    assert [e.name for e in parse([first, disabled], BASE, None, "experiments")] == ["first", "second"]
    # Different parameters may run side by side.
    parse([first, experiment("third", {"ann_k": 50})], BASE, None, "experiments")


def test_every_problem_is_reported_at_once() -> None:
    message = refusal(
        [
            experiment("a", {"nope": 1}),
            ExperimentConfig("b;c", variants=[VariantConfig("v", weight=-1)]),
        ]
    )
    assert "experiments[0].variants[1].overrides: unknown parameters ['nope']" in message
    assert "experiments[1].name must be" in message and "experiments[1].variants[0].weight" in message


@pytest.mark.parametrize(
    "bad",
    [
        ExperimentConfig("named", traffic=2.0, variants=[VariantConfig("a")]),
        ExperimentConfig("named", variants=[VariantConfig("a", 0.0)]),
        ExperimentConfig("named", variants=[VariantConfig("a", overrides={"nope": 1})]),
        ExperimentConfig("named", variants=[VariantConfig("a", overrides={"ef_search": "high"})]),
        ExperimentConfig("named", variants=[VariantConfig("a", overrides={"diversity": 2})]),
        ExperimentConfig("named", variants=[VariantConfig("a", overrides={"model_version": "v9"})]),
    ],
    ids=["traffic", "weights", "unknown", "type", "diversity", "model_version"],
)
def test_every_refusal_names_the_experiment(bad: ExperimentConfig) -> None:
    """The index alone is not enough: definitions from the file come after the inline ones, so
    `experiments[2]` may be the file's first; the name is what an operator can search for."""
    ok = experiment("fine")
    assert "named" in refusal([ok, bad], loaded=["v1"])


def test_config_for_applies_overrides_without_touching_the_base() -> None:
    base = Config(data_dir=None)
    before = copy.deepcopy(config_to_dict(base))
    changed = config_for(
        base,
        {"ef_search": 64, "ann_k": 50, "sources": ["ann"], "model_version": "v2", "diversity": 0.5},
        "where",
    )
    assert changed is not base
    assert changed.shards.index.ef_search == 64
    assert changed.pipeline.candidates.ann_k == 50
    assert changed.pipeline.recommend_sources == ["ann"]
    assert config_to_dict(base) == before  # the base is untouched
    # Everything not overridden is kept.
    assert changed.pipeline.candidates.shard_k == base.pipeline.candidates.shard_k
    assert changed.pipeline.steps == base.pipeline.steps
    # Request-level overrides only: the base itself, no copy.
    assert config_for(base, {"model_version": "v2", "diversity": 0.1}, "where") is base
    assert config_for(base, {}, "where") is base


def test_config_for_names_where_on_refusal() -> None:
    with pytest.raises(ConfigError, match=r"^experiments\[3\]\.variants\[0\]\.overrides: .*ef_search"):
        config_for(BASE, {"ef_search": -1}, "experiments[3].variants[0].overrides")


def test_overrides_key_ignores_order_and_tells_values_apart() -> None:
    assert overrides_key({"a": 1, "b": [1, 2]}) == overrides_key({"b": [1, 2], "a": 1})
    assert overrides_key({"a": 1}) != overrides_key({"a": 2}) != overrides_key({})
    assert overrides_key({"a": 1}) != overrides_key({"a": "1"})
