"""The versioned ranking model: feature weights read from a YAML model file."""

from __future__ import annotations

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
    with open(source) as f:
        raw = yaml.safe_load(f)
    try:
        weights = raw["weights"]
        model = RankingModel(
            version=str(raw["version"]),
            similarity_weight=float(weights["similarity"]),
            side_weights=tuple(float(weights[name]) for name in SIDE_FEATURES),  # type: ignore[arg-type]
            freshness_half_life_s=float(raw["freshness_half_life_days"]) * 86400.0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: malformed model file ({exc!r})") from exc
    if model.freshness_half_life_s <= 0:
        raise ValueError(f"{source}: freshness_half_life_days must be > 0")
    return model
