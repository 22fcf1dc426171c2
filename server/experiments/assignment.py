"""Who is served by which variant: deterministic, from hash(salt, user id) alone.

Every frontend, the edge and a restarted process compute the same assignment with no shared state. A
user's 128-bit hash gives two independent uniforms: the first decides whether they take part (below the
experiment's traffic share), the second picks the variant by the cumulative shares. Keeping them apart
means raising the traffic only adds users, and nobody already in changes variant. Experiments with
different salts draw independent hashes, so being in one says nothing about another.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.experiments.definitions import ANN_OVERRIDES, PER_REQUEST, Experiment, overrides_key
from server.pipeline.stages import Request

_SCALE = float(2**64)


def uniforms(salt: str, user_id: str) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) for this user under this salt."""
    digest = hashlib.blake2b(f"{salt}\0{user_id}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") / _SCALE, int.from_bytes(digest[8:], "little") / _SCALE


def variant_of(experiment: Experiment, user_id: str) -> str | None:
    """The variant serving this user, None outside the experiment (or while it is killed)."""
    if not experiment.enabled:
        return None
    for v in experiment.variants:
        if user_id in v.users:
            return v.name
    takes_part, pick = uniforms(experiment.salt, user_id)
    if takes_part >= experiment.traffic:
        return None
    return experiment.variants[bisect.bisect_right(experiment.bounds, pick)].name


@dataclass(frozen=True, slots=True)
class Arm:
    """What serves one request: the variant of each experiment its user is in, and their overrides."""

    pairs: tuple[tuple[str, str], ...]  # (experiment, variant), in the experiments' order
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """ "experiment=variant" pairs joined by ";" ("" outside every experiment): what the exposure log,
        cache keys and answers carry."""
        return ";".join(f"{e}={v}" for e, v in self.pairs)

    @property
    def pipeline_key(self) -> str:
        """Arms whose pipeline overrides are the same share one pipeline (and batch together); the
        per-request ones (definitions.PER_REQUEST) ride on each request."""
        return overrides_key(self.pipeline_overrides)

    @property
    def pipeline_overrides(self) -> dict[str, Any]:
        """The overrides its pipeline is built with (none of the per-request ones: a pipeline is shared
        by every arm with the same of these, whatever their per-request ones)."""
        return {k: v for k, v in self.overrides.items() if k not in PER_REQUEST}

    @property
    def ann_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.overrides.items() if k in ANN_OVERRIDES}

    def applied_to(self, request: Request) -> Request:
        """The request with the arm's request-level overrides: its model version, and its diversity
        when it asked for none."""
        changes: dict[str, Any] = {}
        if self.model_version is not None:
            changes["model_version"] = self.model_version
        diversity = self.overrides.get("diversity")
        if diversity is not None and request.diversity == 0:
            changes["diversity"] = float(diversity)
        return dataclasses.replace(request, **changes) if changes else request

    @property
    def model_version(self) -> str | None:
        version = self.overrides.get("model_version")
        return None if version is None else str(version)


OUTSIDE = Arm(())


def parse_tag(tag: str) -> list[tuple[str, str]]:
    """The (experiment, variant) pairs of an Arm.tag."""
    pairs = []
    for part in tag.split(";") if tag else ():
        experiment, _, variant = part.partition("=")
        pairs.append((experiment, variant))
    return pairs


class Assigner:
    """Assigns users under one immutable set of experiments; arms are made once per combination."""

    def __init__(self, experiments: Sequence[Experiment]) -> None:
        self.experiments = tuple(experiments)
        self._by_name = {e.name: e for e in self.experiments}
        self._arms: dict[tuple[tuple[str, str], ...], Arm] = {(): OUTSIDE}

    def experiment(self, name: str) -> Experiment | None:
        return self._by_name.get(name)

    def assign(self, user_id: str) -> Arm:
        pairs = []
        for e in self.experiments:
            name = variant_of(e, user_id)
            if name is not None:
                pairs.append((e.name, name))
        key = tuple(pairs)
        arm = self._arms.get(key)
        if arm is None:
            overrides: dict[str, Any] = {}
            for e_name, v_name in key:
                variant = self._by_name[e_name].variant(v_name)
                assert variant is not None
                overrides.update(variant.overrides)  # disjoint across experiments (definitions.py)
            arm = self._arms[key] = Arm(key, overrides)
        return arm
