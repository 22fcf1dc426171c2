"""Protobuf <-> domain types. The only module (with the servicers) that sees generated messages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.catalog.catalog import UserData
from server.domain import (
    Coverage,
    Edge,
    Interaction,
    ItemRecord,
    RecommendQuery,
    Retrieval,
    ScoredItem,
    SimilarQuery,
    Source,
    UserProfile,
)
from server.experiments.outcomes import ExperimentOutcomes, VariantOutcomes
from server.experiments.stats import UnitTotals
from server.gen.recd.v1 import catalog_pb2, common_pb2, recommender_pb2

# Enum values by proto name: typed stubs accept the names, and the wire carries the numbers.
_SOURCE_NAMES = {s: common_pb2.Source.Name(int(s)) for s in Source}
_RETRIEVAL_NAMES = {r: recommender_pb2.Retrieval.Name(int(r)) for r in Retrieval}


def _filter(raw: object) -> dict[str, frozenset[str]]:
    return {name: frozenset(allowed.values) for name, allowed in raw.items()}  # type: ignore[attr-defined]


def recommend_query(req: recommender_pb2.RecommendRequest) -> RecommendQuery:
    return RecommendQuery(
        user_id=req.user_id,
        k=req.k,
        context=dict(req.context),
        exclude_item_ids=frozenset(req.exclude_item_ids),
        filter=_filter(req.filter),
        diversity=req.diversity,
        include_seen=req.include_seen,
    )


def similar_query(req: recommender_pb2.SimilarItemsRequest) -> SimilarQuery:
    return SimilarQuery(item_id=req.item_id, k=req.k, filter=_filter(req.filter))


def interactions(req: recommender_pb2.RecordInteractionsRequest) -> list[Interaction]:
    return [Interaction(i.user_id, i.item_id, i.action, i.weight, i.timestamp_ms) for i in req.interactions]


def _vector(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def item_records(req: catalog_pb2.UpsertItemsRequest) -> list[ItemRecord]:
    return [
        ItemRecord(i.item_id, _vector(i.embedding), dict(i.attributes), i.popularity, i.created_at_ms)
        for i in req.items
    ]


def user_profiles(req: catalog_pb2.UpsertUsersRequest) -> list[UserProfile]:
    return [
        UserProfile(u.user_id, _vector(u.embedding) if len(u.embedding) else None, dict(u.attributes))
        for u in req.users
    ]


def edges(req: catalog_pb2.UpsertEdgesRequest) -> list[Edge]:
    return [Edge(e.src_item_id, e.dst_item_id, e.score) for e in req.edges]


def scored_items(items: list[ScoredItem]) -> list[common_pb2.ScoredItem]:
    out = []
    for item in items:
        c = item.components
        out.append(
            common_pb2.ScoredItem(
                item_id=item.item_id,
                score=item.score,
                sources=[_SOURCE_NAMES[s] for s in item.sources],
                components=common_pb2.ScoreComponents(
                    similarity=c.similarity, graph=c.graph, popularity=c.popularity, freshness=c.freshness
                ),
            )
        )
    return out


def retrieval(path: Retrieval) -> str:
    return _RETRIEVAL_NAMES[path]


def coverage(total: int, ok: int, degraded: list[str]) -> common_pb2.Coverage:
    return common_pb2.Coverage(
        shards_total=total, shards_ok=ok, partial=ok < total, degraded_reasons=list(degraded)
    )


def coverage_of(c: Coverage) -> common_pb2.Coverage:
    return coverage(c.shards_total, c.shards_ok, c.degraded)


def item_message(record: ItemRecord) -> catalog_pb2.Item:
    return catalog_pb2.Item(
        item_id=record.item_id,
        embedding=record.embedding.tolist(),
        attributes=record.attributes,
        popularity=record.popularity,
        created_at_ms=record.created_at_ms,
    )


def user_data_message(data: UserData) -> catalog_pb2.GetUserResponse:
    held = data.held
    profile = None
    if held.profile is not None:
        embedding = [] if held.profile.embedding is None else held.profile.embedding.tolist()
        profile = catalog_pb2.User(
            user_id=held.profile.user_id, embedding=embedding, attributes=held.profile.attributes
        )
    return catalog_pb2.GetUserResponse(
        user_id=data.user_id,
        found=held.found,
        profile=profile,
        interactions=[
            catalog_pb2.UserInteraction(
                item_id=i.item_id, action=i.action, weight=i.weight, timestamp_ms=i.timestamp_ms
            )
            for i in held.interactions
        ],
        interactions_truncated=held.interactions_truncated,
        seen=[
            catalog_pb2.SeenItem(item_id=s.item_id, item_hash=s.item_hash, last_seen_ms=s.last_seen_ms)
            for s in data.seen
        ],
        exposures_held=held.exposures_held,
        outcomes_held=held.outcomes_held,
    )


def experiments(pairs: Sequence[tuple[str, str]]) -> list[recommender_pb2.ExperimentVariant]:
    return [recommender_pb2.ExperimentVariant(experiment=e, variant=v) for e, v in pairs]


def _unit_totals(t: UnitTotals) -> catalog_pb2.UnitTotals:
    return catalog_pb2.UnitTotals(
        n=t.n, sum_x=t.sum_x, sum_y=t.sum_y, sum_xx=t.sum_xx, sum_yy=t.sum_yy, sum_xy=t.sum_xy
    )


def unit_totals(m: catalog_pb2.UnitTotals) -> UnitTotals:
    return UnitTotals(m.n, m.sum_x, m.sum_y, m.sum_xx, m.sum_yy, m.sum_xy)


def experiment_outcomes_message(o: ExperimentOutcomes) -> catalog_pb2.ExperimentOutcomesResponse:
    return catalog_pb2.ExperimentOutcomesResponse(
        experiment=o.experiment,
        enabled=o.enabled,
        traffic=o.traffic,
        since_ms=o.since_ms,
        catalogue_items=o.catalogue_items,
        variants=[
            catalog_pb2.VariantOutcomes(
                variant=v.variant,
                expected_share=v.expected_share,
                units=v.units,
                answers=v.answers,
                impressions=v.impressions,
                distinct_items=v.distinct_items,
                actions={a: _unit_totals(t) for a, t in v.actions.items()},
                latency_ms=_unit_totals(v.latency_ms),
                diversity=_unit_totals(v.diversity),
                forced_units=v.forced_units,
            )
            for v in o.variants
        ],
    )


def experiment_outcomes(m: catalog_pb2.ExperimentOutcomesResponse) -> ExperimentOutcomes:
    """The message back into domain types (the report's side of the call)."""
    return ExperimentOutcomes(
        m.experiment,
        m.enabled,
        m.traffic,
        m.since_ms,
        m.catalogue_items,
        tuple(
            VariantOutcomes(
                v.variant,
                v.expected_share,
                v.units,
                v.answers,
                v.impressions,
                v.distinct_items,
                {a: unit_totals(t) for a, t in v.actions.items()},
                unit_totals(v.latency_ms),
                unit_totals(v.diversity),
                v.forced_units,
            )
            for v in m.variants
        ),
    )
