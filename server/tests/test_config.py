from pathlib import Path

import pytest

from server.config import (
    ConfigError,
    ExperimentConfig,
    ExperimentsConfig,
    ExposuresConfig,
    VariantConfig,
    build_section,
    config_to_dict,
    dump_config,
    load_config,
    with_overrides,
)


def test_defaults_are_valid() -> None:
    config = load_config(environ={})
    assert config.dim == 64
    assert config.shards.count == 20
    assert config.pipeline.steps["ann"].fail_open is True
    assert config.pipeline.steps["filter"].fail_open is False


def test_file_then_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "recd.yaml"
    path.write_text("dim: 128\nshards:\n  count: 8\npipeline:\n  steps:\n    graph: {budget_ms: 7}\n")
    config = load_config(path, environ={"RECD_SHARDS__COUNT": "22", "RECD_CACHE__BACKEND": "redis"})
    assert config.dim == 128  # from the file
    assert config.shards.count == 22  # the environment wins over the file
    assert config.cache.backend == "redis"
    assert config.pipeline.steps["graph"].budget_ms == 7.0
    # a partial mapping overrides entries; the other steps keep their defaults
    assert config.pipeline.steps["ann"].budget_ms == 40.0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RECD_SHARDS__CUNT": "1"}, "unknown config key(s): shards.cunt"),
        ({"RECD_SHARD__COUNT": "1"}, "unknown config key(s): shard"),
        ({"RECD_SHARDS__COUNT": "many"}, "shards.count: expected an integer"),
        ({"RECD_CACHE__BACKEND": "memcached"}, "cache.backend: must be one of"),
        ({"RECD_DIM": "0"}, "dim must be in [1, 4096]"),
        ({"RECD_SERVER__GRACE_S": "true"}, "server.grace_s: expected a number"),
        ({"RECD_PROFILES__SEEN_LIMIT": "0"}, "profiles.seen_limit must be >= 1"),
        ({"RECD_POPULARITY__POPULAR_LIST": "weekly"}, "popularity.popular_list 'weekly' is not one of"),
        ({"RECD_POPULARITY__FEATURE_LIST": "nope"}, "popularity.feature_list 'nope' is not one of"),
        (
            {"RECD_POPULARITY__LISTS__TRENDING": "0"},
            "popularity.lists.trending (a half-life in seconds) must be > 0",
        ),
        ({"RECD_POPULARITY__REFRESH_S": "0"}, "popularity.refresh_s must be > 0"),
        ({"RECD_POPULARITY__PRIOR_WEIGHT": "-1"}, "popularity.prior_weight must be >= 0"),
        ({"RECD_PIPELINE__CANDIDATES__SHARD_K": "0"}, "pipeline.candidates.shard_k must be >= 1"),
        ({"RECD_PIPELINE__CANDIDATES__SHARD_K": "2.5"}, "pipeline.candidates.shard_k: expected an integer"),
        (
            {"RECD_PIPELINE__CANDIDATES__SHARD_K_FACTOR": "0"},
            "pipeline.candidates.shard_k_factor must be > 0",
        ),
        ({"RECD_SHARDS__INDEX__EF_SEARCH": "0"}, "shards.index.ef_search must be >= 1"),
        ({"RECD_CLUSTER__WRITE_ACKS": "-1"}, "cluster needs write_acks >= 0 (0: every replica)"),
        ({"RECD_CLUSTER__HINT_REPLAY_INTERVAL_MS": "0"}, "hint_replay_interval_ms > 0"),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ=environ)
    assert message in str(err.value)


def test_dump_round_trips(tmp_path: Path) -> None:
    config = load_config(environ={"RECD_DIM": "32"})
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(config))
    assert load_config(path, environ={}) == config


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy" / "config"
    for path in sorted(root.glob("*.yaml")):
        load_config(path, environ={})


def test_script_variables_are_not_config() -> None:
    config = load_config(
        environ={"RECD_PYTHON": "/usr/bin/python3", "RECD_STACK_DIR": "/tmp/x", "RECD_TEST_REDIS_URL": "r"}
    )
    assert config == load_config(environ={})


def test_seen_limit_and_popularity_lists() -> None:
    config = load_config(environ={})
    assert config.profiles.seen_limit == 10_000
    assert config.popularity.lists == {"trending": 86_400.0, "all_time": 365 * 86_400.0}
    assert (config.popularity.popular_list, config.popularity.feature_list) == ("all_time", "all_time")
    assert config.popularity.prior_weight == 1.0 and config.popularity.refresh_s == 5.0
    # A list added in the environment (or a file) joins the defaults and may be the one ordered by.
    config = load_config(
        environ={"RECD_POPULARITY__LISTS__WEEKLY": "604800", "RECD_POPULARITY__POPULAR_LIST": "weekly"}
    )
    assert config.popularity.lists["weekly"] == 604_800.0 and "trending" in config.popularity.lists
    assert config.popularity.popular_list == "weekly"


def test_shard_ann_defaults_are_the_bench_pick() -> None:
    """pipeline.candidates.shard_k and shards.index.ef_search are what `recd bench ann` chose
    (BENCHMARKS.md, "Sharded ANN"); the factor still sizes a large k's share per shard."""
    config = load_config(environ={})
    c = config.pipeline.candidates
    assert (c.shard_k, config.shards.index.ef_search) == (4, 16)
    assert (c.ann_k, c.shard_k_factor) == (100, 2.0)
    config = load_config(
        environ={"RECD_PIPELINE__CANDIDATES__SHARD_K": "10", "RECD_SHARDS__INDEX__EF_SEARCH": "50"}
    )
    assert (config.pipeline.candidates.shard_k, config.shards.index.ef_search) == (10, 50)


# --- experiments and exposures ------------------------------------------------------------------------


def test_experiments_and_exposures_defaults() -> None:
    config = load_config(environ={})
    e, x = config.experiments, config.exposures
    assert (e.definitions, e.file, e.reload_interval_s) == ([], None, 5.0)
    assert (e.attribution_window_s, e.outcome_actions) == (86_400.0, ["click", "purchase"])
    assert (x.write_back, x.fatigue_after, x.fatigue_window_s) == (False, 0, 86_400.0)
    assert (x.keep_per_user, x.ttl_s, x.flush_interval_ms, x.queue_max) == (200, 7 * 86_400.0, 20.0, 100_000)


def test_experiments_load_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "recd.yaml"
    path.write_text(
        """
experiments:
  attribution_window_s: 3600
  outcome_actions: [click, add_to_cart]
  definitions:
    - name: ranker
      salt: r1
      traffic: 0.2
      variants:
        - {name: control}
        - name: wide
          weight: 2
          overrides: {ef_search: 64, sources: [ann, popular]}
          users: [qa-1]
exposures:
  write_back: true
  fatigue_after: 3
"""
    )
    config = load_config(path, environ={})
    (ranker,) = config.experiments.definitions
    assert ranker == ExperimentConfig(
        "ranker",
        "r1",
        0.2,
        True,
        [
            VariantConfig("control"),
            VariantConfig("wide", 2.0, {"ef_search": 64, "sources": ["ann", "popular"]}, ["qa-1"]),
        ],
    )
    assert config.experiments.outcome_actions == ["click", "add_to_cart"]
    assert config.exposures.write_back and config.exposures.fatigue_after == 3
    # And back: the dumped config loads to the same experiments.
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again, environ={}).experiments == config.experiments


def test_experiments_from_the_environment() -> None:
    config = load_config(
        environ={"RECD_EXPERIMENTS__FILE": "/etc/recd/experiments.yaml", "RECD_EXPOSURES__QUEUE_MAX": "10"}
    )
    assert config.experiments.file == "/etc/recd/experiments.yaml" and config.exposures.queue_max == 10


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RECD_EXPERIMENTS__RELOAD_INTERVAL_S": "-1"}, "experiments.reload_interval_s must be >= 0"),
        ({"RECD_EXPERIMENTS__ATTRIBUTION_WINDOW_S": "0"}, "experiments.attribution_window_s must be > 0"),
        ({"RECD_EXPERIMENTS__OUTCOME_ACTIONS": "[click, other]"}, "must be 1..64 characters and not 'other'"),
        ({"RECD_EXPERIMENTS__OUTCOME_ACTIONS": "['']"}, "experiments.outcome_actions: ['']"),
        (
            {"RECD_EXPOSURES__FATIGUE_AFTER": "3"},
            "exposures.fatigue_after must be >= 0 and needs exposures.write_back",
        ),
        (
            {"RECD_EXPOSURES__WRITE_BACK": "true", "RECD_EXPOSURES__FATIGUE_AFTER": "-1"},
            "exposures.fatigue_after",
        ),
        ({"RECD_EXPOSURES__KEEP_PER_USER": "0"}, "keep_per_user >= 1"),
        ({"RECD_EXPOSURES__QUEUE_MAX": "0"}, "queue_max >= 1"),
        ({"RECD_EXPOSURES__FLUSH_INTERVAL_MS": "-1"}, "flush_interval_ms >= 0"),
        (
            {"RECD_EXPOSURES__TTL_S": "3600"},
            "exposures.ttl_s (3600.0) must cover experiments.attribution_window_s",
        ),
        (
            {"RECD_EXPOSURES__FATIGUE_WINDOW_S": "1000000000"},
            "must cover experiments.attribution_window_s (86400.0) and exposures.fatigue_window_s (1000000000.0)",
        ),
        (
            {"RECD_EXPERIMENTS__DEFINITIONS": "[{name: x, traffic: lots}]"},
            "experiments.definitions[0].traffic",
        ),
        ({"RECD_EXPERIMENTS__DEFINITIONS": "[{name: x, variants: [{name: a, colour: red}]}]"}, "colour"),
    ],
)
def test_experiments_and_exposures_are_validated(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    assert message in str(info.value)


def test_section_problems_are_empty_for_the_defaults() -> None:
    assert ExperimentsConfig().problems() == []
    assert ExposuresConfig().problems(ExperimentsConfig().attribution_window_s) == []
    assert ExposuresConfig(write_back=True, fatigue_after=5).problems(3600.0) == []


def test_with_overrides_copies_checks_and_names_where() -> None:
    base = load_config(environ={})
    before = config_to_dict(base)
    changed = with_overrides(base, {"shards.index.ef_search": 64, "pipeline.candidates.ann_k": 50}, "here")
    assert changed.shards.index.ef_search == 64 and changed.pipeline.candidates.ann_k == 50
    assert config_to_dict(base) == before and base.shards.index.ef_search == 16
    with pytest.raises(
        ConfigError, match=r"^here: shards\.index\.ef_search: expected an integer, got 'high'"
    ):
        with_overrides(base, {"shards.index.ef_search": "high"}, "here")
    with pytest.raises(ConfigError, match=r"^here: shards\.index\.ef_search must be >= 1"):  # validated
        with_overrides(base, {"shards.index.ef_search": 0}, "here")
    with pytest.raises(ConfigError, match=r"^here: unknown config key\(s\): shards\.index\.ef"):
        with_overrides(base, {"shards.index.ef": 1}, "here")
    with pytest.raises(ConfigError, match=r"dim is not a section"):
        with_overrides(base, {"dim.x": 1}, "here")
    assert with_overrides(base, {}, "here") == base


def test_build_section_checks_like_the_config_file() -> None:
    raw = [{"name": "e", "variants": [{"name": "a", "weight": 2, "overrides": {"ann_k": 10}}]}]
    built = build_section(list[ExperimentConfig], raw, "experiments.file (f.yaml)")
    assert built == [ExperimentConfig("e", variants=[VariantConfig("a", 2.0, {"ann_k": 10})])]
    assert build_section(ExposuresConfig, {"queue_max": 5}, "x") == ExposuresConfig(queue_max=5)
    with pytest.raises(
        ConfigError, match=r"^experiments\.file \(f\.yaml\)\[0\]\.enabled: expected true or false"
    ):
        build_section(list[ExperimentConfig], [{"name": "e", "enabled": "no"}], "experiments.file (f.yaml)")
    with pytest.raises(ConfigError, match=r"^where: expected a list"):
        build_section(list[ExperimentConfig], {"name": "e"}, "where")
    with pytest.raises(ConfigError, match=r"^where\[0\]: expected a mapping"):
        build_section(list[ExperimentConfig], ["e"], "where")
