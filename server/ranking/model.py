"""The versioned ranking model: feature weights read from a YAML model file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

DEFAULT_MODEL_FILE = Path(__file__).with_name("default_model.yaml")

# Order of the side features in every RankBatch.side array.
SIDE_FEATURES = ("graph", "popularity", "freshness")


@dataclass(frozen=True, slots=True)
class RankingModel:
    version: str
    similarity_weight: float
    side_weights: tuple[float, float, float]
    freshness_half_life_s: float

    @property
    def side_weight_vector(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.side_weights, dtype=np.float32)


def load_model(path: str | Path | None = None) -> RankingModel:
    """Reads a model file; a missing or malformed weight is an error naming the file and the key."""
    source = Path(path) if path is not None else DEFAULT_MODEL_FILE
    return parse_model(source.read_bytes(), source)


def parse_model(text: bytes | str, source: str | Path) -> RankingModel:
    """A model from a model file's content; ValueError (naming `source` and what is wrong) for anything a
    ranker could not serve: unparsable YAML, a missing key, a weight that is not a finite number."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML ({exc})") from exc
    try:
        weights = raw["weights"]
        model = RankingModel(
            version=str(raw["version"]).strip(),
            similarity_weight=float(weights["similarity"]),
            side_weights=tuple(float(weights[name]) for name in SIDE_FEATURES),  # type: ignore[arg-type]
            freshness_half_life_s=float(raw["freshness_half_life_days"]) * 86400.0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: malformed model file ({exc!r})") from exc
    if not model.version or raw["version"] is None:
        raise ValueError(f"{source}: version must be a non-empty string (answers carry it)")
    named = dict(
        zip(("similarity", *SIDE_FEATURES), (model.similarity_weight, *model.side_weights), strict=True)
    )
    bad = [name for name, w in named.items() if not math.isfinite(w)]
    if bad:
        raise ValueError(f"{source}: weights {bad} must be finite numbers")
    if not model.freshness_half_life_s > 0 or not math.isfinite(model.freshness_half_life_s):
        raise ValueError(f"{source}: freshness_half_life_days must be a finite number > 0")
    return model
