"""Tests of server/experiments/registry.py: the watched file of experiments is loaded at start, picked up
after reload_interval_s (an injected clock), and a file that does not load is refused while the
experiments before it keep serving."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from server.config import Config, ConfigError, ExperimentConfig, ExperimentsConfig, VariantConfig
from server.experiments.assignment import OUTSIDE
from server.experiments.registry import ExperimentRegistry, load_file


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reloads(outcome: str) -> float:
    return REGISTRY.get_sample_value("recd_experiments_reloads_total", {"outcome": outcome}) or 0.0


def share(experiment: str, variant: str) -> float | None:
    return REGISTRY.get_sample_value(
        "recd_experiment_variant_share", {"experiment": experiment, "variant": variant}
    )


def write(path: Path, text: str) -> None:
    """Rewrites the file and moves its mtime on, so the change is seen even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


ONE = """
- name: colour
  traffic: 0.5
  variants:
    - {name: control}
    - {name: blue, weight: 3, overrides: {ef_search: 40}, users: [qa-1]}
"""

TWO = """
- name: colour
  traffic: 1.0
  variants:
    - {name: control}
    - {name: blue, overrides: {ef_search: 40}, users: [qa-1]}
- name: ranker
  variants:
    - {name: old}
    - {name: new, overrides: {model_version: v2}}
"""


def registry(
    tmp_path: Path,
    text: str | None = ONE,
    *,
    clock: Clock | None = None,
    interval_s: float = 5.0,
    inline: list[ExperimentConfig] | None = None,
    models: list[str] | None = None,
) -> tuple[ExperimentRegistry, Path, Clock]:
    path = tmp_path / "experiments.yaml"
    if text is not None:
        write(path, text)
    clock = clock or Clock()
    config = Config(
        data_dir=None,
        experiments=ExperimentsConfig(definitions=inline or [], file=str(path), reload_interval_s=interval_s),
    )
    loaded = None if models is None else (lambda: models)
    return ExperimentRegistry(config, loaded, clock), path, clock


def names(r: ExperimentRegistry) -> list[str]:
    return [e.name for e in r.current().experiments]


def test_a_file_of_experiments_loads(tmp_path: Path) -> None:
    r, _, _ = registry(tmp_path)
    assert names(r) == ["colour"] and r.enabled
    (e,) = r.current().experiments
    assert e.traffic == 0.5 and [v.share for v in e.variants] == [0.25, 0.75]
    assert r.current().assign("qa-1").pairs == (("colour", "blue"),)
    assert r.current().assign("qa-1").overrides == {"ef_search": 40}
    # The expected share of all users per variant, for sample-ratio checks in PromQL.
    assert share("colour", "control") == pytest.approx(0.125)
    assert share("colour", "blue") == pytest.approx(0.375)


def test_no_experiments_means_not_enabled(tmp_path: Path) -> None:
    r, _, _ = registry(tmp_path, "[]\n")
    assert not r.enabled and r.current().assign("anyone") is OUTSIDE
    r, _, _ = registry(tmp_path, "")  # an empty file is no experiments, not an error
    assert not r.enabled


def test_a_change_is_picked_up_after_the_reload_interval(tmp_path: Path) -> None:
    r, path, clock = registry(tmp_path)
    loaded = reloads("loaded")
    write(path, TWO)
    clock.now += 4.9
    assert names(r) == ["colour"]  # not looked at yet
    clock.now += 0.1
    assert names(r) == ["colour", "ranker"]
    assert reloads("loaded") == loaded + 1
    assert r.current().assign("qa-1").pairs[0] == ("colour", "blue")
    # Unchanged since: nothing is re-read, nothing counted.
    clock.now += 60
    assigner = r.current()
    assert names(r) == ["colour", "ranker"] and r.current() is assigner
    assert reloads("loaded") == loaded + 1


def test_a_file_replaced_by_rename_is_picked_up(tmp_path: Path) -> None:
    """How Kubernetes updates a mounted ConfigMap: a new file renamed onto the path."""
    r, path, clock = registry(tmp_path)
    new = tmp_path / "new.yaml"
    new.write_text(TWO)
    os.replace(new, path)
    clock.now += 5
    assert names(r) == ["colour", "ranker"]


@pytest.mark.parametrize(
    "broken",
    [
        "- name: colour\n  variants: [ {name: a\n",  # not YAML
        "colour: {traffic: 1}\n",  # not a list
        "- name: colour\n  traffic: lots\n  variants: [{name: a}]\n",  # the wrong type
        "- name: colour\n  colour: red\n  variants: [{name: a}]\n",  # an unknown key
        "- name: colour\n  variants: [{name: a, overrides: {nope: 1}}]\n",  # a bad definition
        "- name: colour\n  variants: [{name: a, weight: 0}]\n",  # weights add up to 0
        "- name: colour\n  variants: [{name: a}]\n- name: colour\n  variants: [{name: b}]\n",
    ],
    ids=["yaml", "not-a-list", "type", "unknown-key", "override", "weights", "duplicate"],
)
def test_a_broken_file_is_refused_and_the_experiments_before_it_stay(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    r, path, clock = registry(tmp_path)
    before = r.current()
    refused, loaded = reloads("refused"), reloads("loaded")
    write(path, broken)
    clock.now += 5
    assert r.current() is before and names(r) == ["colour"]
    assert r.current().assign("qa-1").pairs == (("colour", "blue"),)
    assert reloads("refused") == refused + 1 and reloads("loaded") == loaded
    assert any(rec.levelname == "ERROR" and "refused" in rec.getMessage() for rec in caplog.records)
    assert share("colour", "blue") == pytest.approx(0.375)  # the gauge still describes what serves
    # Refused once, not at every check while the file stays broken.
    clock.now += 5
    r.current()
    assert reloads("refused") == refused + 1
    # Fixed: loaded.
    write(path, TWO)
    clock.now += 5
    assert names(r) == ["colour", "ranker"] and reloads("loaded") == loaded + 1


def test_a_deleted_file_is_refused(tmp_path: Path) -> None:
    r, path, clock = registry(tmp_path)
    refused = reloads("refused")
    path.unlink()
    clock.now += 5
    assert names(r) == ["colour"] and reloads("refused") == refused + 1


def test_a_model_version_that_is_not_loaded_is_refused_on_reload(tmp_path: Path) -> None:
    r, path, clock = registry(tmp_path, models=["v1"])
    refused = reloads("refused")
    write(path, TWO)  # ranker/new names v2
    clock.now += 5
    assert names(r) == ["colour"] and reloads("refused") == refused + 1


def test_kill_switch_through_the_file(tmp_path: Path) -> None:
    r, path, clock = registry(tmp_path, TWO)
    assert r.current().assign("qa-1").pairs[0] == ("colour", "blue")
    write(path, TWO.replace("traffic: 1.0", "traffic: 1.0\n  enabled: false", 1))
    clock.now += 5
    (colour, _) = r.current().experiments
    assert not colour.enabled
    for user in ("qa-1", *(f"u{n}" for n in range(500))):
        assert all(e != "colour" for e, _ in r.current().assign(user).pairs)
    assert share("colour", "blue") == 0.0 and share("colour", "control") == 0.0
    assert share("ranker", "new") == pytest.approx(0.5)


def test_inline_definitions_and_the_file_merge(tmp_path: Path) -> None:
    inline = [ExperimentConfig("inline", variants=[VariantConfig("a"), VariantConfig("b")])]
    r, _, _ = registry(tmp_path, ONE, inline=inline)
    assert names(r) == ["inline", "colour"]
    assert [e for e, _ in r.current().assign("qa-1").pairs] == ["inline", "colour"]


def test_duplicate_names_across_inline_and_file_are_refused(tmp_path: Path) -> None:
    inline = [ExperimentConfig("colour", variants=[VariantConfig("a")])]
    with pytest.raises(ConfigError, match="'colour' is used by another experiment"):
        registry(tmp_path, ONE, inline=inline)
    # And on reload: the file gains a name the config already has.
    inline = [ExperimentConfig("ranker", variants=[VariantConfig("a")])]
    r, path, clock = registry(tmp_path, ONE, inline=inline)
    refused = reloads("refused")
    write(path, TWO)
    clock.now += 5
    assert names(r) == ["ranker", "colour"] and reloads("refused") == refused + 1


def test_a_bad_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        registry(tmp_path, None)
    with pytest.raises(ConfigError, match="not YAML"):
        registry(tmp_path, "[ {")


def test_reload_now_raises_and_changes_nothing(tmp_path: Path) -> None:
    r, path, _ = registry(tmp_path)
    before = r.current()
    write(path, "- name: a=b\n  variants: [{name: a}]\n")
    with pytest.raises(ConfigError, match="name must be"):
        r.reload()
    assert r.current() is before
    write(path, TWO)
    assert [e.name for e in r.reload().experiments] == ["colour", "ranker"]


def test_interval_zero_never_rereads(tmp_path: Path) -> None:
    r, path, clock = registry(tmp_path, interval_s=0)
    write(path, TWO)
    clock.now += 3600
    assert names(r) == ["colour"]


def test_inline_only_needs_no_file() -> None:
    config = Config(
        data_dir=None,
        experiments=ExperimentsConfig(definitions=[ExperimentConfig("x", variants=[VariantConfig("a")])]),
    )
    r = ExperimentRegistry(config)
    assert [e.name for e in r.current().experiments] == ["x"]
    assert share("x", "a") == 1.0


def test_load_file_builds_typed_definitions(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump([{"name": "e", "salt": "s", "variants": [{"name": "a", "weight": 2}]}]))
    (c,) = load_file(str(path))
    assert c == ExperimentConfig("e", "s", 1.0, True, [VariantConfig("a", 2.0)])
    path.write_text("- name: e\n  variants: [{name: a, weight: heavy}]\n")
    with pytest.raises(ConfigError, match=r"experiments\.file \(.*\)\[0\]\.variants\[0\]\.weight"):
        load_file(str(path))
