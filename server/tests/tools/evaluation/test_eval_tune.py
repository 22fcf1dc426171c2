"""`recd tune`: the search on a feature pool, and the command end to end (a loadable model file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.cli import main
from server.ranking.model import load_model
from server.tools import datagen
from server.tools.evaluation.exact import PoolFeatures
from server.tools.evaluation.tune import coordinate_ascent, pool_ndcg

NOW_MS = 1_750_000_000_000


def pool(features: list[list[list[float]]], relevant: list[list[bool]], counts: list[int]) -> PoolFeatures:
    f = np.asarray(features, dtype=np.float32)
    return PoolFeatures(f, np.ones(f.shape[:2], bool), np.asarray(relevant), np.asarray(counts, np.int64))


def test_pool_ndcg_by_hand() -> None:
    # one user, three candidates; the relevant one has the best popularity but the worst similarity
    p = pool([[[0.9, 0, 0, 0], [0.5, 0, 0, 0], [0.1, 0, 1.0, 0]]], [[False, False, True]], [1])
    by_similarity = np.asarray([1, 0, 0, 0], np.float32)
    by_popularity = np.asarray([0, 0, 1, 0], np.float32)
    assert pool_ndcg(p, by_similarity, 3) == pytest.approx(1 / np.log2(4))
    assert pool_ndcg(p, by_similarity, 2) == 0.0
    assert pool_ndcg(p, by_popularity, 1) == 1.0
    # a relevant item outside the pool still counts in the ideal list
    p2 = pool([[[1, 0, 0, 0]]], [[True]], [2])
    assert pool_ndcg(p2, by_similarity, 2) == pytest.approx(1 / (1 + 1 / np.log2(3)))


def test_padding_never_ranks() -> None:
    p = pool([[[0.0, 0, 0, 0], [-1.0, 0, 0, 0]]], [[False, True]], [1])
    p.valid[0, 0] = False  # the first slot is padding: the relevant item is the only real candidate
    assert pool_ndcg(p, np.asarray([1, 0, 0, 0], np.float32), 1) == 1.0


def test_coordinate_ascent_finds_the_informative_feature_and_never_loses() -> None:
    rng = np.random.default_rng(0)
    users, width = 200, 50
    features = rng.random((users, width, 4)).astype(np.float32)
    relevant = np.zeros((users, width), bool)
    relevant[np.arange(users), np.argmax(features[:, :, 3], axis=1)] = True  # the freshest is relevant
    p = PoolFeatures(features, np.ones((users, width), bool), relevant, np.ones(users, np.int64))
    start = np.asarray([1.0, 0.35, 0.08, 0.05], np.float32)
    weights, best, steps = coordinate_ascent(p, start, 5, rounds=4)
    assert best == pytest.approx(pool_ndcg(p, weights, 5))
    assert best > pool_ndcg(p, start, 5) + 0.3
    assert weights[3] > 5 * weights[0]  # freshness now dominates similarity
    assert [s.ndcg for s in steps] == sorted(s.ndcg for s in steps)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tune-data")
    datagen.generate(out, items=1500, users=250, dim=16, clusters=40, seed=5, now_ms=NOW_MS)
    return out


def test_tune_writes_a_loadable_model_no_worse_on_validation(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, js = tmp_path / "tuned.yaml", tmp_path / "tune.json"
    code = main(
        [
            "tune",
            str(data_dir),
            "--out",
            str(out),
            "--holdout",
            "3",
            "--validation",
            "3",
            "--no-progress",
            "--out-json",
            str(js),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    model = load_model(out)
    assert model.version.startswith("tuned-")
    assert out.read_text().startswith("# Tuned by `recd tune`")
    figures = json.loads(js.read_text())
    assert figures["tuned_version"] == model.version
    validation = figures["validation_ndcg"]
    assert validation[model.version] >= validation[figures["base_version"]]
    # served on the test split by a fresh server with each model: the second one read the tuned file
    served_by = [e["model_version"] for e in figures["test_evals"]]
    assert served_by == [figures["base_version"], model.version]
    assert figures["test_figures"][model.version]["served_ndcg"] > 0
    assert f"`{model.version}`" in captured.out
