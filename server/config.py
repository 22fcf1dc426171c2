"""Effective configuration: built-in defaults, then a YAML file (--config), then RECD_* variables.

Environment variables name a key path with double underscores: RECD_SHARDS__COUNT=22 sets shards.count,
RECD_DIM=128 sets dim. Values are parsed as YAML scalars, so "true", "0.5" and "[a, b]" work.
Unknown keys and wrongly typed values are errors that name the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class ServerConfig:
    address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9464"
    # Beyond this many RPCs in flight, callers get RESOURCE_EXHAUSTED instead of queueing unboundedly.
    max_concurrent_rpcs: int = 512
    grace_s: float = 5.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Largest batch one write RPC (UpsertItems, RecordInteractions, ...) may carry.
    max_batch: int = 10_000
    max_id_bytes: int = 256
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"


@dataclass
class IndexConfig:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 100
    initial_capacity: int = 16_384


@dataclass
class MicroBatchConfig:
    max_batch: int = 64
    max_wait_ms: float = 0.3


@dataclass
class ShardsConfig:
    count: int = 20
    vnodes: int = 1024
    index: IndexConfig = field(default_factory=IndexConfig)
    snapshot_every_records: int = 50_000
    group_commit_window_ms: float = 2.0
    # Concurrent Recommends that arrive together share one Search call per node.
    search_batch: MicroBatchConfig = field(default_factory=MicroBatchConfig)


@dataclass
class StepConfig:
    budget_ms: float = 10.0
    # fail_open: a failure or overrun degrades the answer; fail closed: it fails the request.
    fail_open: bool = True


def _default_steps() -> dict[str, StepConfig]:
    return {
        "validate": StepConfig(budget_ms=2.0, fail_open=False),
        "hydrate_user": StepConfig(budget_ms=15.0, fail_open=True),
        "candidates": StepConfig(budget_ms=50.0, fail_open=False),
        "ann": StepConfig(budget_ms=40.0, fail_open=True),
        "graph": StepConfig(budget_ms=25.0, fail_open=True),
        "popular": StepConfig(budget_ms=5.0, fail_open=True),
        "filter": StepConfig(budget_ms=5.0, fail_open=False),
        "rank": StepConfig(budget_ms=25.0, fail_open=True),
        "select": StepConfig(budget_ms=5.0, fail_open=False),
    }


@dataclass
class CandidatesConfig:
    # ANN candidates per request before filtering; per-shard k is derived from it.
    ann_k: int = 200
    # Per-shard k = ceil(ann_k * shard_k_factor / shards), at least 10: the true top-k is spread over
    # shards, so each shard needs only its share plus slack, not the global k.
    shard_k_factor: float = 2.0
    graph_seeds: int = 10
    graph_hops: int = 2
    graph_limit_per_hop: int = 20
    graph_min_score: float = 0.05
    popular_k: int = 200
    history_limit: int = 50
    # Half-life of an interaction's weight in the user vector.
    history_half_life_s: float = 7 * 24 * 3600.0


@dataclass
class PipelineConfig:
    budget_ms: float = 80.0
    steps: dict[str, StepConfig] = field(default_factory=_default_steps)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    # Ranked candidates MMR chooses from when diversity is asked for (at least 2k): diversity needs
    # candidates from beyond the closest neighbourhood, so the pool is wider than k.
    mmr_pool: int = 500


@dataclass
class RankingConfig:
    ranker: Literal["auto", "gpu", "cpu"] = "auto"
    # None: the model file shipped in server/ranking/default_model.yaml.
    model_file: str | None = None
    batch: MicroBatchConfig = field(default_factory=MicroBatchConfig)


@dataclass
class ProfilesConfig:
    backend: Literal["embedded", "scylla"] = "embedded"
    history_limit: int = 500
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    port: int = 9042
    keyspace: str = "recd"
    local_dc: str | None = None
    consistency: str = "LOCAL_QUORUM"
    replication: dict[str, Any] = field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1}
    )
    request_timeout_ms: float = 20.0


@dataclass
class GraphConfig:
    backend: Literal["embedded", "neo4j"] = "embedded"
    uri: str = "bolt://127.0.0.1:7687"
    user: str = "neo4j"
    password: str = ""
    database: str = "neo4j"


@dataclass
class CacheConfig:
    backend: Literal["embedded", "redis"] = "embedded"
    max_bytes: int = 64 * 1024 * 1024
    url: str = "redis://127.0.0.1:6379/0"
    timeout_ms: float = 5.0
    user_vector_ttl_s: float = 300.0


@dataclass
class ResponseConfig:
    # How long the edge tier may serve a Recommend answer from its cache.
    cache_ttl_seconds: int = 30


@dataclass
class Config:
    dim: int = 64
    # None keeps everything in memory (tests); a directory makes writes durable.
    data_dir: str | None = "data/recd"
    server: ServerConfig = field(default_factory=ServerConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)

    def validate(self) -> None:
        problems = []
        if not 1 <= self.dim <= 4096:
            problems.append(f"dim must be in [1, 4096], got {self.dim}")
        if self.shards.count < 1:
            problems.append(f"shards.count must be >= 1, got {self.shards.count}")
        if self.pipeline.budget_ms <= 0:
            problems.append("pipeline.budget_ms must be > 0")
        for name in _default_steps():
            if name not in self.pipeline.steps:
                problems.append(f"pipeline.steps.{name} is missing")
        if problems:
            raise ConfigError("; ".join(problems))


class ConfigError(ValueError):
    pass


ENV_PREFIX = "RECD_"


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, overlaid by the YAML file at `path`, overlaid by RECD_* variables."""
    raw: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "TEST_"):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        _set_path(raw, keys, yaml.safe_load(value) if value != "" else None)
    config = _build(Config, raw, "")
    config.validate()
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(_join(where, k) for k in unknown))}")
    defaults = cls()
    values = {}
    for name in fields:
        default = getattr(defaults, name)
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], _join(where, name), default)
        else:
            values[name] = default
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str, default: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        merged = dataclasses.asdict(default) if default is not None else {}
        merged.update(value if isinstance(value, dict) else {"__bad__": value})
        if "__bad__" in merged:
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(typing.cast(type, tp), merged, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, default)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]", None) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        # A mapping in the file overrides entries of the default mapping, it does not replace it whole.
        out = dict(default) if isinstance(default, dict) else {}
        for k, v in value.items():
            base = default.get(k) if isinstance(default, dict) else None
            out[str(k)] = _coerce(args[1], v, f"{where}.{k}", base)
        return out
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported config type {tp}")
