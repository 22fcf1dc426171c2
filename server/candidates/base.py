"""The candidate source interface: given a hydrated batch, propose item rows with a source score."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.domain import Source
from server.pipeline.stages import Hydrated, SourceHits


class CandidateSource(Protocol):
    # Also the name of its policy in pipeline.steps and of its degraded reason.
    name: str
    source: Source
    # False for sources that only compute in memory: they run even when the budget is spent, so a request
    # always has the popular fallback to answer with.
    awaits_io: bool

    def applies(self, hydrated: Hydrated) -> npt.NDArray[np.bool_]:
        """Per request, whether this source has anything to go on (e.g. ANN needs a vector)."""
        ...

    async def fetch(self, hydrated: Hydrated, applies: npt.NDArray[np.bool_], timeout_s: float) -> SourceHits:
        """Hits for every request of the batch; empty for those `applies` leaves out."""
        ...


def answered(hydrated: Hydrated) -> npt.NDArray[np.bool_]:
    """Requests not already answered with an error."""
    mask = np.ones(len(hydrated.batch), np.bool_)
    for i in hydrated.rejected:
        mask[i] = False
    return mask
