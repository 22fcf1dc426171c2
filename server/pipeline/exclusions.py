"""What a request must not be answered with, as sorted item labels.

Labels (stable 64-bit item hashes) rather than ids: the seen set can hold 10,000 items per user, and a
sorted uint64 array is tested against in O(log n) per candidate without building a Python set.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server import _core
from server.pipeline.context import RequestContext

Labels = npt.NDArray[np.uint64]


def excluded_labels(ctx: RequestContext) -> Labels:
    """Labels no candidate may have, sorted and unique: the request's exclusions, the seed item, and
    (unless include_seen) everything the user has seen. The shards get the whole list, so each one
    over-fetches by what it actually holds of it and a heavy user still gets k unseen items."""
    named = list(ctx.exclude_item_ids)
    if ctx.seed_item_id is not None:
        named.append(ctx.seed_item_id)
    parts = [_core.stable_hash64(named)] if named else []
    if not ctx.include_seen and len(ctx.seen_labels):
        parts.append(ctx.seen_labels)
    if not parts:
        return np.empty(0, np.uint64)
    # The seen set arrives sorted and unique; only named ids need sorting in.
    return np.unique(np.concatenate(parts)) if named else parts[0]
