"""Input limits, checked at the start of every request: a violation names the field and the limit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from server.errors import invalid

if TYPE_CHECKING:
    from server.config import Config

MAX_K = 1000
DEFAULT_K = 10
MAX_FILTER_VALUES = 1000
MAX_EXCLUDE = 10_000
MAX_CONTEXT_ENTRIES = 64
F16_MAX = 65504.0
# How far in the future an interaction's timestamp may lie (clock skew between services).
MAX_CLOCK_SKEW_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Limits:
    dim: int
    max_batch: int
    max_id_bytes: int = 256

    @classmethod
    def of(cls, config: Config) -> Limits:
        return cls(config.dim, config.server.max_batch, config.server.max_id_bytes)


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


def check_filter(filter_: Mapping[str, Iterable[str]]) -> None:
    for name, values in filter_.items():
        if not name:
            raise invalid("filter has an empty attribute name")
        count = len(list(values))
        if count == 0:
            raise invalid(f"filter[{name!r}] lists no allowed values; remove it or list at least one")
        if count > MAX_FILTER_VALUES:
            raise invalid(f"filter[{name!r}] lists {count} values; the limit is {MAX_FILTER_VALUES}")


def check_exclusions(ids: Sequence[str], limits: Limits) -> None:
    if len(ids) > MAX_EXCLUDE:
        raise invalid(f"exclude_item_ids has {len(ids)} entries; the limit is {MAX_EXCLUDE}")
    check_ids(ids, "exclude_item_ids", limits)


def check_context(context: Mapping[str, str]) -> None:
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise invalid(f"context has {len(context)} entries; the limit is {MAX_CONTEXT_ENTRIES}")


def check_embedding(values: Sequence[float] | npt.NDArray[np.float32], field: str, limits: Limits) -> None:
    if len(values) != limits.dim:
        raise invalid(f"{field} has dimension {len(values)}; this deployment's dimension is {limits.dim}")
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise invalid(f"{field} contains NaN or Inf; every value must be finite")
    if np.any(np.abs(array) > F16_MAX):
        raise invalid(f"{field} has a value beyond +-{F16_MAX:g}, the FP16 range embeddings are stored in")
    if not np.any(array):
        raise invalid(f"{field} is all zeros; an embedding needs a direction")


def check_weight(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise invalid(f"{field} must be finite and >= 0, got {value}")


def check_edge_score(value: float, field: str) -> None:
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise invalid(f"{field} must be within (0, 1], got {value}")


def check_popularity(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise invalid(f"{field} must be finite and >= 0, got {value}")
