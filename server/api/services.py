"""The Recommender and Catalog servicers: convert, call Recd, convert back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from server.api import convert
from server.api.errors import grpc_errors
from server.catalog.catalog import Catalog
from server.catalog.deletions import HEARTBEAT_S, DeletionLog
from server.errors import invalid
from server.gen.recd.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)
from server.recommender import Recommender


def caller_deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class RecommenderService(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, recommender: Recommender) -> None:
        self._recommender = recommender

    @grpc_errors
    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        answer = await self._recommender.recommend(convert.recommend_query(request), caller_deadline(context))
        return recommender_pb2.RecommendResponse(
            items=convert.scored_items(answer.items),
            coverage=convert.coverage_of(answer.coverage),
            cache_key=answer.cache_key,
            cache_ttl_seconds=answer.cache_ttl_seconds,
            model_version=answer.model_version,
            retrieval=convert.retrieval(answer.retrieval),
            experiments=convert.experiments(answer.experiments),
        )

    @grpc_errors
    async def SimilarItems(
        self, request: recommender_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.SimilarItemsResponse:
        query = convert.similar_query(request)
        answer = await self._recommender.similar_items(query, caller_deadline(context))
        return recommender_pb2.SimilarItemsResponse(
            items=convert.scored_items(answer.items),
            coverage=convert.coverage_of(answer.coverage),
            model_version=answer.model_version,
            retrieval=convert.retrieval(answer.retrieval),
        )

    @grpc_errors
    async def RecordInteractions(
        self, request: recommender_pb2.RecordInteractionsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecordInteractionsResponse:
        accepted = await self._recommender.record_interactions(convert.interactions(request))
        return recommender_pb2.RecordInteractionsResponse(accepted=accepted)


# GetUser reads a whole seen set and up to 10,000 interactions: an operator's read, not the request path's.
GET_USER_TIMEOUT_S = 10.0
# A watcher's since_ms may run ahead of this frontend's clock by this much (skew between machines).
MAX_SINCE_AHEAD_MS = 60_000


class CatalogService(catalog_pb2_grpc.CatalogServicer):
    def __init__(
        self, catalog: Catalog, deletions: DeletionLog | None = None, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        self._catalog = catalog
        self._deletions = deletions
        self._heartbeat_s = heartbeat_s
        if deletions is not None:
            # Erasures through this frontend reach the edges by its WatchDeletes stream.
            catalog.add_erasure_listener(deletions.record_erasures)

    @grpc_errors
    async def UpsertItems(
        self, request: catalog_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.UpsertItemsResponse:
        upserted = await self._catalog.upsert_items(convert.item_records(request))
        return catalog_pb2.UpsertItemsResponse(upserted=upserted)

    @grpc_errors
    async def DeleteItems(
        self, request: catalog_pb2.DeleteItemsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.DeleteItemsResponse:
        deleted = await self._catalog.delete_items(list(request.item_ids))
        return catalog_pb2.DeleteItemsResponse(deleted=deleted)

    @grpc_errors
    async def GetItems(
        self, request: catalog_pb2.GetItemsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.GetItemsResponse:
        found, missing = await self._catalog.get_items(list(request.item_ids))
        return catalog_pb2.GetItemsResponse(
            items=[convert.item_message(r) for r in found], missing_item_ids=missing
        )

    @grpc_errors
    async def UpsertUsers(
        self, request: catalog_pb2.UpsertUsersRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.UpsertUsersResponse:
        upserted = await self._catalog.upsert_users(convert.user_profiles(request))
        return catalog_pb2.UpsertUsersResponse(upserted=upserted)

    @grpc_errors
    async def DeleteUser(
        self, request: catalog_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.DeleteUserResponse:
        await self._catalog.delete_user(request.user_id)
        return catalog_pb2.DeleteUserResponse()

    @grpc_errors
    async def DeleteUsers(
        self, request: catalog_pb2.DeleteUsersRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.DeleteUsersResponse:
        erased = await self._catalog.delete_users(list(request.user_ids))
        return catalog_pb2.DeleteUsersResponse(erased=erased)

    @grpc_errors
    async def GetUser(
        self, request: catalog_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.GetUserResponse:
        remaining = context.time_remaining()
        timeout_s = GET_USER_TIMEOUT_S if remaining is None else min(remaining, GET_USER_TIMEOUT_S)
        data = await self._catalog.get_user(request.user_id, request.max_interactions, timeout_s)
        return convert.user_data_message(data)

    @grpc_errors
    async def UpsertEdges(
        self, request: catalog_pb2.UpsertEdgesRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.UpsertEdgesResponse:
        upserted = await self._catalog.upsert_edges(convert.edges(request))
        return catalog_pb2.UpsertEdgesResponse(upserted=upserted)

    @grpc_errors
    async def AdminReloadModel(
        self, request: catalog_pb2.AdminReloadModelRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.AdminReloadModelResponse:
        report = await self._catalog.reload_models(request.default_version)
        return catalog_pb2.AdminReloadModelResponse(
            default_version=report.default_version,
            versions=report.versions,
            files=[
                catalog_pb2.ModelFileStatus(path=f.path, outcome=f.outcome, version=f.version, error=f.error)
                for f in report.files
            ],
        )

    @grpc_errors
    async def AdminExperimentOutcomes(
        self, request: catalog_pb2.ExperimentOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ExperimentOutcomesResponse:
        if request.since_ms < 0:
            raise invalid(f"since_ms must be >= 0 (0: everything held), got {request.since_ms}")
        outcomes = await self._catalog.experiment_outcomes(request.experiment, request.since_ms)
        return convert.experiment_outcomes_message(outcomes)

    @grpc_errors
    async def Stats(
        self, request: catalog_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.StatsResponse:
        s = await self._catalog.stats()
        return catalog_pb2.StatsResponse(
            items=s.items,
            shards=[
                catalog_pb2.ShardItemCount(shard_id=shard, items=live, deleted=dead)
                for shard, (live, dead) in sorted(s.items_per_shard.items())
            ],
            users=s.users,
            edges=s.edges,
            dimension=s.dimension,
            index=catalog_pb2.IndexParameters(
                space=str(s.index["space"]),
                m=int(s.index["m"]),
                ef_construction=int(s.index["ef_construction"]),
                ef_search=int(s.index["ef_search"]),
            ),
            model_version=s.model_version,
        )

    # Not under grpc_errors: a stream is an async generator, and nothing in it raises a RecdError.
    async def WatchDeletes(  # type: ignore[override]
        self, request: catalog_pb2.WatchDeletesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[catalog_pb2.DeletedItems]:
        if self._deletions is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server keeps no deletion log")
            return
        now_ms = int(time.time() * 1000)
        if request.since_ms < 0 or request.since_ms > now_ms + MAX_SINCE_AHEAD_MS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"since_ms must be 0 (new deletes only) or a Unix time in milliseconds no later than "
                f"{MAX_SINCE_AHEAD_MS} ms past this server's clock ({now_ms}); got {request.since_ms}",
            )
        async for batch in self._deletions.follow(request.since_ms, self._heartbeat_s):
            yield catalog_pb2.DeletedItems(
                item_ids=batch.item_ids,
                position_ms=batch.position_ms,
                covers_from_ms=batch.covers_from_ms,
                erased_user_ids=batch.erased_user_ids,
                started_ms=batch.started_ms,
            )
