"""What a request must not be answered with, as sorted item labels.

Labels (stable 64-bit item hashes) rather than ids: the seen set can hold 10,000 items per user, and a
sorted uint64 array is tested against in O(log n) per candidate without building a Python set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from server import _core
from server.pipeline.stages import Ragged, Request

Labels = npt.NDArray[np.uint64]
NO_LABELS: Labels = np.empty(0, np.uint64)


def excluded_labels(request: Request, seen: Labels) -> Labels:
    """Labels no candidate may have, sorted and unique: the request's exclusions, the seed item, and
    (unless include_seen) everything the user has seen (`seen`: sorted and unique). The shards get the
    whole list, so each one over-fetches by what it actually holds of it and a heavy user still gets k
    unseen items."""
    named = list(request.exclude_item_ids)
    if request.seed_item_id is not None:
        named.append(request.seed_item_id)
    parts = [_core.stable_hash64(named)] if named else []
    if not request.include_seen and len(seen):
        parts.append(seen)
    if not parts:
        return NO_LABELS
    # The seen set arrives sorted and unique; only named ids need sorting in.
    return np.unique(np.concatenate(parts)) if named else parts[0]


def excluded_batch(requests: Sequence[Request], seen: Sequence[Labels]) -> Ragged:
    return Ragged.of([excluded_labels(r, s) for r, s in zip(requests, seen, strict=True)], np.uint64)
