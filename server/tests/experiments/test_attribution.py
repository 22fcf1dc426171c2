"""Tests of server/experiments/attribution.py: an interaction goes to the newest answer that served its item
to the user within the window (and not clearly after it), and the per-variant counters count it."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from server.backends.memory_profiles import InMemoryProfileStore
from server.catalog.item_store import ItemStore
from server.config import ExperimentsConfig, ExposuresConfig
from server.domain import Exposure, Interaction, Outcome
from server.experiments.assignment import Arm
from server.experiments.attribution import CLOCK_TOLERANCE_MS, Attributor, attribute, count
from server.experiments.exposures import ExposureLog

T = 1_700_000_000_000
HOUR_MS = 3_600_000
WINDOW_MS = 24 * HOUR_MS


def served(user: str, at: int, items: tuple[str, ...], arm: str) -> Exposure:
    return Exposure(user, at, items, arm, 5.0, 0.0)


def click(user: str, item: str, at: int, action: str = "click") -> Interaction:
    return Interaction(user, item, action, 1.0, at)


def actions(experiment: str, variant: str, action: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "recd_experiment_actions_total", {"experiment": experiment, "variant": variant, "action": action}
        )
        or 0.0
    )


def test_the_newest_matching_exposure_wins() -> None:
    exposures = {
        "u1": [  # newest first, as the store and pending() give them
            served("u1", T - 1000, ("x", "y"), "e=new-but-not-the-item"),
            served("u1", T - 2000, ("a", "b"), "e=newer"),
            served("u1", T - 3000, ("a",), "e=older"),
        ]
    }
    (o,) = attribute([click("u1", "a", T)], exposures, WINDOW_MS)
    assert o == Outcome("u1", "a", "click", 1.0, T, T - 2000, "e=newer")


def test_each_interaction_is_attributed_on_its_own() -> None:
    exposures = {
        "u1": [served("u1", T - 10, ("a", "b"), "e=v1")],
        "u2": [served("u2", T - 10, ("a",), "e=v2;f=w")],
    }
    out = attribute(
        [click("u1", "a", T), click("u1", "b", T, "purchase"), click("u2", "a", T), click("u3", "a", T)],
        exposures,
        WINDOW_MS,
    )
    assert [(o.user_id, o.item_id, o.action, o.arm) for o in out] == [
        ("u1", "a", "click", "e=v1"),
        ("u1", "b", "purchase", "e=v1"),
        ("u2", "a", "click", "e=v2;f=w"),
    ]


def test_an_item_the_user_was_not_served_is_not_attributed() -> None:
    exposures = {"u1": [served("u1", T - 10, ("a",), "e=v1")]}
    assert attribute([click("u1", "z", T)], exposures, WINDOW_MS) == []
    assert attribute([click("u2", "a", T)], exposures, WINDOW_MS) == []  # another user's answer


def test_outside_the_window_is_not_attributed() -> None:
    exposures = {"u1": [served("u1", T - WINDOW_MS - 1, ("a",), "e=v1")]}
    assert attribute([click("u1", "a", T)], exposures, WINDOW_MS) == []
    # At the window's edge it still counts.
    exposures = {"u1": [served("u1", T - WINDOW_MS, ("a",), "e=v1")]}
    assert len(attribute([click("u1", "a", T)], exposures, WINDOW_MS)) == 1
    # An older match behind a too-old one is older still: not attributed either.
    exposures = {
        "u1": [
            served("u1", T - WINDOW_MS - 5, ("b",), "e=v1"),
            served("u1", T - WINDOW_MS - 10, ("a",), "e=v2"),
        ]
    }
    assert attribute([click("u1", "a", T)], exposures, WINDOW_MS) == []


def test_served_after_the_interaction_is_not_attributed_beyond_the_tolerance() -> None:
    late = served("u1", T + CLOCK_TOLERANCE_MS + 1, ("a",), "e=late")
    assert attribute([click("u1", "a", T)], {"u1": [late]}, WINDOW_MS) == []
    # ...but an earlier answer behind it still is.
    earlier = served("u1", T - 60_000, ("a",), "e=earlier")
    (o,) = attribute([click("u1", "a", T)], {"u1": [late, earlier]}, WINDOW_MS)
    assert o.arm == "e=earlier"
    # Within the tolerance (the caller's clock a little behind the frontend's) it counts.
    skewed = served("u1", T + CLOCK_TOLERANCE_MS, ("a",), "e=skewed")
    (o,) = attribute([click("u1", "a", T)], {"u1": [skewed, earlier]}, WINDOW_MS)
    assert o.arm == "e=skewed" and o.served_at_ms == T + CLOCK_TOLERANCE_MS


def test_write_back_only_exposures_attribute_nothing() -> None:
    """An answer logged outside every experiment (arm "") is not a variant's, and does not hide an
    older experiment answer that served the item too."""
    outside = served("u1", T - 10, ("a",), "")
    assert attribute([click("u1", "a", T)], {"u1": [outside]}, WINDOW_MS) == []
    inside = served("u1", T - 1000, ("a",), "e=v1")
    (o,) = attribute([click("u1", "a", T)], {"u1": [outside, inside]}, WINDOW_MS)
    assert o.arm == "e=v1"


def test_count_labels_each_pair_and_folds_unknown_actions_into_other() -> None:
    before = {
        key: actions(*key)
        for key in [
            ("cnt", "a", "click"),
            ("cnt", "a", "other"),
            ("cnt", "b", "purchase"),
            ("cnt2", "x", "click"),
            ("cnt", "a", "share"),
        ]
    }
    count(
        [
            Outcome("u1", "i", "click", 1.0, T, T, "cnt=a"),
            Outcome("u1", "j", "click", 1.0, T, T, "cnt=a;cnt2=x"),
            Outcome("u1", "k", "share", 1.0, T, T, "cnt=a"),
            Outcome("u2", "i", "purchase", 1.0, T, T, "cnt=b"),
            Outcome("u3", "i", "click", 1.0, T, T, ""),  # no variant: nothing counted
        ],
        ["click", "purchase"],
    )
    assert actions("cnt", "a", "click") == before[("cnt", "a", "click")] + 2
    assert actions("cnt2", "x", "click") == before[("cnt2", "x", "click")] + 1
    assert actions("cnt", "a", "other") == before[("cnt", "a", "other")] + 1
    assert actions("cnt", "b", "purchase") == before[("cnt", "b", "purchase")] + 1
    # The unknown action name never becomes a label value.
    assert actions("cnt", "a", "share") == 0.0


# --- Attributor: attribution off the write path, in batches -----------------------------------------
class FailingStore:
    async def read_exposures(self, *args: object) -> list[list[Exposure]]:
        raise ConnectionError("store down")


def errors() -> float:
    return REGISTRY.get_sample_value("recd_experiment_attribution_errors_total") or 0.0


def attributor(store: object, log: ExposureLog, **config: object) -> Attributor:
    exposures = ExposuresConfig(flush_interval_ms=60_000.0, **config)  # type: ignore[arg-type]
    return Attributor(store, log, ExperimentsConfig(), exposures, 1.0)  # type: ignore[arg-type]


async def test_queued_interactions_are_attributed_in_one_batch_against_stored_and_pending_answers() -> None:
    store = InMemoryProfileStore(None)
    log = ExposureLog(store, ItemStore(2), ExposuresConfig(flush_interval_ms=60_000.0))
    now = int(time.time() * 1000)
    await store.record_exposures([served("u1", now - 1000, ("a", "b"), "e=written")], 10, 3600.0)
    log.log("u2", ["c"], Arm((("e", "queued"),)), 0.001)  # not written yet: pending in this process
    attributing = attributor(store, log)
    attributing.add([click("u1", "a", now), click("u2", "c", now), click("u3", "z", now)])
    assert await store.scan_outcomes(0) == []  # nothing until the batch runs
    await attributing.flush()
    outcomes = await store.scan_outcomes(0)
    assert sorted((o.user_id, o.item_id, o.arm) for o in outcomes) == [
        ("u1", "a", "e=written"),
        ("u2", "c", "e=queued"),
    ]
    await attributing.close()
    await log.close()


async def test_a_failed_attribution_is_counted_and_raises_nothing() -> None:
    log = ExposureLog(InMemoryProfileStore(None), ItemStore(2), ExposuresConfig(flush_interval_ms=60_000.0))
    attributing = attributor(FailingStore(), log)
    before = errors()
    attributing.add([click("u1", "a", T), click("u2", "b", T)])
    await attributing.flush()
    assert errors() == before + 2


async def test_a_full_queue_drops_and_counts() -> None:
    log = ExposureLog(InMemoryProfileStore(None), ItemStore(2), ExposuresConfig(flush_interval_ms=60_000.0))
    attributing = attributor(InMemoryProfileStore(None), log, queue_max=2)
    before = errors()
    attributing.add([click("u1", "a", T), click("u1", "b", T), click("u1", "c", T)])
    assert errors() == before + 1


async def test_forget_drops_an_erased_users_queued_interactions() -> None:
    store = InMemoryProfileStore(None)
    log = ExposureLog(store, ItemStore(2), ExposuresConfig(flush_interval_ms=60_000.0))
    now = int(time.time() * 1000)
    await store.record_exposures(
        [served("u1", now - 1000, ("a",), "e=x"), served("u2", now - 1000, ("a",), "e=x")], 10, 3600.0
    )
    attributing = attributor(store, log)
    attributing.add([click("u1", "a", now), click("u2", "a", now)])
    await attributing.forget(["u1"])
    await attributing.flush()
    assert [o.user_id for o in await store.scan_outcomes(0)] == ["u2"]
