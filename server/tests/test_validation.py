"""The domain's input checks (server/validation.py): each limit, just inside and just past it."""

from __future__ import annotations

import numpy as np
import pytest

from server import validation
from server.config import ConfigError, load_config
from server.errors import ErrorKind, RecdError
from server.validation import Limits

DIM = 8
LIMITS = Limits(DIM, 10)


def refused(call: object, *args: object) -> str:
    with pytest.raises(RecdError) as err:
        call(*args)  # type: ignore[operator]
    assert err.value.kind == ErrorKind.INVALID_ARGUMENT
    return err.value.message


def test_limits_come_from_the_config() -> None:
    config = load_config(
        environ={
            "RECD_DIM": "32",
            "RECD_SERVER__MAX_BATCH": "50",
            "RECD_SERVER__LIMITS__MAX_ATTRIBUTE_NAMES": "7",
            "RECD_SERVER__LIMITS__MAX_FILTER_ATTRIBUTES": "3",
        }
    )
    limits = Limits.of(config)
    assert (limits.dim, limits.max_batch, limits.max_attribute_names, limits.max_filter_attributes) == (
        32,
        50,
        7,
        3,
    )
    # Every field of Limits that LimitsConfig has comes from it.
    assert limits.max_attribute_value_bytes == config.server.limits.max_attribute_value_bytes


def test_a_limit_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"RECD_SERVER__LIMITS__MAX_ATTRIBUTES_PER_ITEM": "0"})
    assert "server.limits.max_attributes_per_item must be >= 1, got 0" in str(err.value)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([1e-30] * DIM, "has a norm of 2.83e-30, too small to normalise in float32"),
        ([1e-45] + [0.0] * (DIM - 1), "too small to normalise in float32"),
        ([1e-40] * DIM, "too small to normalise in float32"),
        ([0.0] * DIM, "is all zeros"),
        ([np.nan] * DIM, "contains NaN or Inf"),
        ([70_000.0] + [0.0] * (DIM - 1), "FP16 range"),
        ([1.0] * (DIM + 1), f"has dimension {DIM + 1}; this deployment's dimension is {DIM}"),
    ],
)
def test_embeddings_that_cannot_be_stored_are_refused(vector: list[float], message: str) -> None:
    assert message in refused(validation.check_embedding, vector, "e", LIMITS)


@pytest.mark.parametrize("vector", [[1e-18] * DIM, [1.0] + [0.0] * (DIM - 1), [65504.0] * DIM, [-1e-3] * DIM])
def test_embeddings_that_normalise_are_accepted(vector: list[float]) -> None:
    validation.check_embedding(vector, "e", LIMITS)
    unit = np.asarray(vector, np.float32) / np.linalg.norm(
        np.asarray(vector, np.float32).reshape(1, -1), axis=1
    )
    assert np.isfinite(unit).all()


def test_attributes_limits() -> None:
    ok = {f"a{n}": "v" for n in range(64)}
    validation.check_attributes(ok, "items[0].attributes", "max_attributes_per_item", LIMITS)
    assert "has 65 entries; the limit is 64 (server.limits.max_attributes_per_item)" in refused(
        validation.check_attributes,
        {**ok, "one": "more"},
        "items[0].attributes",
        "max_attributes_per_item",
        LIMITS,
    )
    assert "items[0].attributes['d'] is 1025 bytes; the limit is 1024 bytes" in refused(
        validation.check_attributes,
        {"d": "x" * 1025},
        "items[0].attributes",
        "max_attributes_per_item",
        LIMITS,
    )
    validation.check_attributes({"n" * 128: "x" * 1024}, "a", "max_attributes_per_user", LIMITS)
    assert "is 129 bytes; the limit is 128 bytes" in refused(
        validation.check_attributes, {"n" * 129: "x"}, "a", "max_attributes_per_user", LIMITS
    )
    assert "has an empty key" in refused(
        validation.check_attributes, {"": "x"}, "a", "max_attributes_per_user", LIMITS
    )


def test_new_attribute_names_are_bounded_by_the_catalogue() -> None:
    limits = Limits(DIM, 10, max_attribute_names=3)
    held = {"lang", "category"}
    validation.check_new_attribute_names(["lang", "brand"], held.__contains__, len(held), limits)
    validation.check_new_attribute_names(["lang", "category"], held.__contains__, len(held), limits)
    message = refused(
        validation.check_new_attribute_names, ["brand", "size"], held.__contains__, len(held), limits
    )
    assert "items add 2 new attribute names to the 2 the catalogue holds; the limit is 3" in message


def test_filter_and_context_limits() -> None:
    validation.check_filter({f"a{n}": ["x"] for n in range(32)}, LIMITS)
    assert "filter has 33 attributes; the limit is 32" in refused(
        validation.check_filter, {f"a{n}": ["x"] for n in range(33)}, LIMITS
    )
    assert "filter['a'] has 1001 values; the limit is 1000" in refused(
        validation.check_filter, {"a": [str(n) for n in range(1001)]}, LIMITS
    )
    assert "filter['a'] value is 1025 bytes" in refused(validation.check_filter, {"a": ["x" * 1025]}, LIMITS)
    assert "lists no allowed values" in refused(validation.check_filter, {"a": []}, LIMITS)
    validation.check_context({f"k{n}": "v" for n in range(64)}, LIMITS)
    assert "context has 65 entries; the limit is 64" in refused(
        validation.check_context, {f"k{n}": "v" for n in range(65)}, LIMITS
    )
    assert "context['k'] is 1025 bytes" in refused(validation.check_context, {"k": "x" * 1025}, LIMITS)
    assert "exclude_item_ids has 10001 entries; the limit is 10000" in refused(
        validation.check_exclusions, [f"i{n}" for n in range(10_001)], LIMITS
    )
