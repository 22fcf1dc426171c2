"""Input limits, checked at the start of every request: a violation names the field and the limit."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from server.errors import invalid

if TYPE_CHECKING:
    from server.config import Config, LimitsConfig

MAX_K = 1000
DEFAULT_K = 10
F16_MAX = 65504.0
# How far in the future an interaction's timestamp may lie (clock skew between services).
MAX_CLOCK_SKEW_MS = 86_400_000
# The smallest positive normal float32: an embedding whose norm is below it (denormal or tiny values)
# has no direction that survives normalisation in float32.
_F32_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may carry; the defaults are server.limits' (server/config.py, LimitsConfig)."""

    dim: int
    max_batch: int
    max_id_bytes: int = 256
    max_attributes_per_item: int = 64
    max_attributes_per_user: int = 64
    max_attribute_name_bytes: int = 128
    max_attribute_value_bytes: int = 1024
    max_attribute_names: int = 256
    max_filter_attributes: int = 32
    max_filter_values: int = 1000
    max_context_entries: int = 64
    max_exclude_ids: int = 10_000

    @classmethod
    def of(cls, config: Config) -> Limits:
        return cls.with_limits(
            config.dim, config.server.max_batch, config.server.max_id_bytes, config.server.limits
        )

    @classmethod
    def with_limits(cls, dim: int, max_batch: int, max_id_bytes: int, limits: LimitsConfig) -> Limits:
        settings = {k: v for k, v in vars(limits).items() if k in cls.__dataclass_fields__}
        return cls(dim, max_batch, max_id_bytes, **settings)


def check_count(count: int, field: str, limit: int, setting: str, what: str = "entries") -> None:
    """Cheap, so it runs on the wire message before anything is converted. `setting`: the limit's key
    under server.limits."""
    if count > limit:
        raise invalid(f"{field} has {count} {what}; the limit is {limit} (server.limits.{setting})")


def check_dimension(length: int, field: str, limits: Limits) -> None:
    if length != limits.dim:
        raise invalid(f"{field} has dimension {length}; this deployment's dimension is {limits.dim}")


def check_id(value: str, field: str, limits: Limits) -> None:
    if not value:
        raise invalid(f"{field} must not be empty")
    size = len(value.encode())
    if size > limits.max_id_bytes:
        raise invalid(f"{field} is {size} bytes; the limit is {limits.max_id_bytes} bytes")


def check_ids(values: Sequence[str], field: str, limits: Limits) -> None:
    for i, value in enumerate(values):
        check_id(value, f"{field}[{i}]", limits)


def check_batch(size: int, field: str, limits: Limits, allow_empty: bool = False) -> None:
    if size == 0 and not allow_empty:
        raise invalid(f"{field} must not be empty")
    if size > limits.max_batch:
        raise invalid(f"{field} has {size} entries; the limit is {limits.max_batch} per call")


def resolve_k(k: int, field: str = "k") -> int:
    """0 means the default; anything else must be within [1, MAX_K]."""
    if k == 0:
        return DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise invalid(f"{field} must be between 1 and {MAX_K}, got {k}")
    return k


def check_diversity(value: float) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise invalid(f"diversity must be within [0, 1] (0 = off), got {value}")


def _check_text(value: str, field: str, limit: int, setting: str) -> None:
    size = len(value.encode())
    if size > limit:
        raise invalid(f"{field} is {size} bytes; the limit is {limit} bytes (server.limits.{setting})")


def check_attributes(attributes: Mapping[str, str], field: str, setting: str, limits: Limits) -> None:
    """`setting`: max_attributes_per_item or max_attributes_per_user."""
    limit = getattr(limits, setting)
    check_count(len(attributes), field, limit, setting)
    for name, value in attributes.items():
        if not name:
            raise invalid(f"{field} has an empty key")
        _check_text(
            name, f"{field} key {name[:32]!r}", limits.max_attribute_name_bytes, "max_attribute_name_bytes"
        )
        _check_text(
            value, f"{field}[{name!r}]", limits.max_attribute_value_bytes, "max_attribute_value_bytes"
        )


def check_new_attribute_names(
    names: Iterable[str], known: Callable[[str], bool], held: int, limits: Limits
) -> None:
    """The catalogue keeps a column per attribute name: a batch may add names only while the catalogue
    stays within max_attribute_names (`held`: the names it holds, `known`: whether it holds one)."""
    new = {name for name in names if not known(name)}
    if held + len(new) > limits.max_attribute_names:
        raise invalid(
            f"items add {len(new)} new attribute names to the {held} the catalogue holds; the limit is "
            f"{limits.max_attribute_names} distinct names (server.limits.max_attribute_names): attribute "
            f"names are a small vocabulary (lang, category), values carry the variety"
        )


def check_filter(filter_: Mapping[str, Iterable[str]], limits: Limits) -> None:
    check_count(len(filter_), "filter", limits.max_filter_attributes, "max_filter_attributes", "attributes")
    for name, values in filter_.items():
        if not name:
            raise invalid("filter has an empty attribute name")
        _check_text(
            name, f"filter key {name[:32]!r}", limits.max_attribute_name_bytes, "max_attribute_name_bytes"
        )
        allowed = list(values)
        if not allowed:
            raise invalid(f"filter[{name!r}] lists no allowed values; remove it or list at least one")
        check_count(
            len(allowed), f"filter[{name!r}]", limits.max_filter_values, "max_filter_values", "values"
        )
        for value in allowed:
            _check_text(
                value,
                f"filter[{name!r}] value",
                limits.max_attribute_value_bytes,
                "max_attribute_value_bytes",
            )


def check_exclusions(ids: Sequence[str], limits: Limits) -> None:
    check_count(len(ids), "exclude_item_ids", limits.max_exclude_ids, "max_exclude_ids")
    check_ids(ids, "exclude_item_ids", limits)


def check_context(context: Mapping[str, str], limits: Limits) -> None:
    check_count(len(context), "context", limits.max_context_entries, "max_context_entries")
    for key, value in context.items():
        _check_text(
            key, f"context key {key[:32]!r}", limits.max_attribute_name_bytes, "max_attribute_name_bytes"
        )
        _check_text(value, f"context[{key!r}]", limits.max_attribute_value_bytes, "max_attribute_value_bytes")


def check_embedding(values: Sequence[float] | npt.NDArray[np.float32], field: str, limits: Limits) -> None:
    check_dimension(len(values), field, limits)
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise invalid(f"{field} contains NaN or Inf; every value must be finite")
    if np.any(np.abs(array) > F16_MAX):
        raise invalid(f"{field} has a value beyond +-{F16_MAX:g}, the FP16 range embeddings are stored in")
    if not np.any(array):
        raise invalid(f"{field} is all zeros; an embedding needs a direction")
    # Embeddings are normalised in float32 (here and at the shards): the norm must be a normal float32
    # and the unit vector finite, or tiny/denormal values pass the checks above and fail at the shard.
    # Computed as the write path does (server/catalog/writes.py, unit_rows: a row norm in float32).
    vector = np.asarray(values, dtype=np.float32).reshape(1, -1)
    norm = float(np.linalg.norm(vector, axis=1)[0])
    if not (math.isfinite(norm) and norm >= _F32_TINY and np.all(np.isfinite(vector / np.float32(norm)))):
        raise invalid(
            f"{field} has a norm of {float(np.linalg.norm(array)):.3g}, too small to normalise in float32 "
            f"(at least {_F32_TINY:.3g}); scale the vector up"
        )


def check_weight(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise invalid(f"{field} must be finite and >= 0, got {value}")


def check_edge_score(value: float, field: str) -> None:
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise invalid(f"{field} must be within (0, 1], got {value}")


def check_popularity(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise invalid(f"{field} must be finite and >= 0, got {value}")
