"""Item labels (stable 64-bit item hashes, also the shard labels) held as sorted arrays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.uint64]


def contains_sorted(sorted_labels: Labels, labels: Labels) -> npt.NDArray[np.bool_]:
    """True where `labels[i]` is in `sorted_labels` (sorted ascending): a binary search per label, so a
    10,000-item seen set costs no Python set and no sort of its own."""
    if len(sorted_labels) == 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=np.bool_)
    at = np.searchsorted(sorted_labels, labels)
    at[at == len(sorted_labels)] = 0
    return sorted_labels[at] == labels
