"""The model registry and its hot reload from the model files (server/ranking/registry.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from server import metrics
from server.ranking.base import RankBatch
from server.ranking.cpu import CpuRanker
from server.ranking.model import load_model, parse_model
from server.ranking.registry import ModelRegistry, ModelReloader, UnknownModelVersion
from server.ranking.service import RankService

GOOD = """version: {version}
weights: {{similarity: {similarity}, graph: 0.5, popularity: 0.25, freshness: 0.125}}
freshness_half_life_days: 30
"""


def write(path: Path, text: str) -> None:
    """As an operator should: a new file renamed over the old one, so no reader sees half of it."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def model_file(path: Path, version: str, similarity: float = 1.0) -> Path:
    write(path, GOOD.format(version=version, similarity=similarity))
    return path


def reloads(outcome: str) -> float:
    return metrics.MODEL_RELOADS.labels(outcome)._value.get()


@pytest.fixture
def default_file(tmp_path: Path) -> Path:
    return model_file(tmp_path / "model.yaml", "v1")


def reloader_for(path: Path, *extra: Path) -> ModelReloader:
    return ModelReloader(ModelRegistry(load_model(path)), str(path), [str(p) for p in extra], interval_s=0)


def test_a_changed_file_becomes_the_default_and_its_old_version_goes(default_file: Path) -> None:
    reloader = reloader_for(default_file)
    registry = reloader.registry
    before = reloads("loaded")
    (outcome,) = reloader.reload()
    assert outcome.outcome == "unchanged" and registry.default.version == "v1"
    model_file(default_file, "v2", similarity=2.0)
    (outcome,) = reloader.reload()
    assert (outcome.outcome, outcome.version) == ("loaded", "v2")
    assert registry.default.version == "v2" and registry.default.similarity_weight == 2.0
    assert registry.versions() == ["v2"] and reloads("loaded") == before + 1
    with pytest.raises(UnknownModelVersion, match="'v1' is not loaded; loaded: \\['v2'\\]"):
        registry.get("v1")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("version: v2\nweights: [1, 2\n", "not YAML"),
        ("version: v2\nweights: {similarity: 1.0}\nfreshness_half_life_days: 30\n", "malformed"),
        (GOOD.format(version="v2", similarity=".nan"), "must be finite"),
        (GOOD.format(version="v2", similarity="1.0").replace("30", "0"), "freshness_half_life_days"),
        (GOOD.format(version='""', similarity="1.0"), "version must be a non-empty string"),
        # The same version with other weights: answers and edge cache keys could not tell them apart.
        (GOOD.format(version="v1", similarity="3.0"), "already loaded with other weights"),
        ("", "malformed"),
    ],
)
def test_a_broken_file_is_refused_and_the_old_version_keeps_serving(
    default_file: Path, content: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = reloader_for(default_file)
    before = reloads("refused")
    write(default_file, content)
    with caplog.at_level(logging.ERROR, logger="server.ranking.registry"):
        (outcome,) = reloader.reload()
        (again,) = reloader.reload(force=True)  # the same bad content is logged once, not at every look
    assert outcome.outcome == "refused" and why in outcome.error and outcome.version == "v1"
    assert again.outcome == "unchanged"
    assert reloader.registry.default.version == "v1" and reloader.registry.versions() == ["v1"]
    assert reloads("refused") == before + 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"model file {default_file} refused: ") and why in line
    assert "version v1 of this file keeps serving" in line
    model_file(default_file, "v2")  # fixed: it loads
    assert reloader.reload()[0].outcome == "loaded" and reloader.registry.default.version == "v2"


def test_a_missing_file_is_refused_once_until_it_comes_back(
    default_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = reloader_for(default_file)
    default_file.unlink()
    with caplog.at_level(logging.ERROR, logger="server.ranking.registry"):
        assert [reloader.reload()[0].outcome for _ in range(3)] == ["refused"] * 3
    assert len(caplog.records) == 1 and "cannot read it" in caplog.records[0].getMessage()
    assert reloader.registry.default.version == "v1"
    model_file(default_file, "v1")
    assert reloader.reload()[0].outcome == "unchanged" and reloader.registry.default.version == "v1"


def test_a_comment_or_a_touch_reloads_nothing(default_file: Path) -> None:
    reloader = reloader_for(default_file)
    first = reloader.registry.default
    write(default_file, "# tuned again, same weights\n" + default_file.read_text())
    assert reloader.reload()[0].outcome == "unchanged"
    os.utime(default_file)
    assert reloader.reload()[0].outcome == "unchanged"
    assert reloader.registry.default is first


def test_two_versions_loaded_and_the_default_switched(tmp_path: Path, default_file: Path) -> None:
    extra = model_file(tmp_path / "candidate.yaml", "v9", similarity=0.5)
    reloader = reloader_for(default_file, extra)
    registry = reloader.registry
    assert registry.versions() == ["v1", "v9"] and registry.default.version == "v1"
    assert registry.get("v9").similarity_weight == 0.5 and registry.get(None) is registry.get("v1")
    report = reloader.reload_now("v9")
    assert report.default_version == "v9" and report.versions == ["v1", "v9"]
    assert [f.outcome for f in report.files] == ["unchanged", "unchanged"]
    with pytest.raises(UnknownModelVersion):
        reloader.reload_now("v7")
    assert registry.default.version == "v9"
    model_file(extra, "v10", similarity=0.75)  # an extra file's new version replaces its old one
    reloader.reload()
    assert registry.versions() == ["v1", "v10"] and registry.default.version == "v10"
    model_file(default_file, "v2")  # model_file's new version takes the default back
    reloader.reload()
    assert registry.versions() == ["v10", "v2"] and registry.default.version == "v2"
    loaded = {
        (s.labels["version"], s.labels["role"])
        for metric in metrics.MODEL_LOADED.collect()
        for s in metric.samples
        if s.value == 1
    }
    assert loaded == {("v2", "default"), ("v10", "loaded")}


def test_a_version_two_files_hold_stays_until_both_moved_on(tmp_path: Path, default_file: Path) -> None:
    twin = model_file(tmp_path / "twin.yaml", "v1")  # the same model as model_file
    reloader = reloader_for(default_file, twin)
    assert reloader.registry.versions() == ["v1"]
    model_file(twin, "v5")
    reloader.reload()
    assert reloader.registry.versions() == ["v1", "v5"] and reloader.registry.default.version == "v1"


async def test_the_rank_service_ranks_with_the_version_asked_for(default_file: Path, tmp_path: Path) -> None:
    from server import _core

    extra = model_file(tmp_path / "b.yaml", "vb", similarity=-1.0)
    reloader = reloader_for(default_file, extra)
    table = _core.F16Table(4, 8)
    vectors = np.eye(4, dtype=np.float32)
    table.set_rows(np.arange(4, dtype=np.int64), vectors)
    service = RankService(CpuRanker(table, reloader.registry.default), None, models=reloader.registry)
    batch = RankBatch(vectors[:1], np.arange(4, dtype=np.int64)[None, :], np.zeros((1, 4, 3), np.float32), 1)
    try:
        result, _, model = await service.rank(batch, 1)
        assert model.version == "v1" and result.positions[0, 0] == 0  # the most similar item
        result, _, model = await service.rank(batch, 1, version="vb")
        assert model.version == "vb" and result.positions[0, 0] != 0  # similarity now counts against
        with pytest.raises(UnknownModelVersion):
            await service.rank(batch, 1, version="nope")
    finally:
        service.close()


async def test_the_watch_loads_a_change_without_being_asked(default_file: Path) -> None:
    registry = ModelRegistry(load_model(default_file))
    reloader = ModelReloader(registry, str(default_file), interval_s=0.02)
    reloader.start()
    try:
        model_file(default_file, "v2")
        for _ in range(250):
            if registry.default.version == "v2":
                break
            await asyncio.sleep(0.02)
        assert registry.default.version == "v2"
    finally:
        await reloader.close()


def test_parse_model_names_the_source() -> None:
    with pytest.raises(ValueError, match=r"^somewhere\.yaml: malformed model file"):
        parse_model("version: x\n", "somewhere.yaml")
