from pathlib import Path

import pytest

from server.config import ConfigError, dump_config, load_config


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
