"""A gRPC client for recd's public API, in domain types: used by the CLI, the loader and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from server.config import ClientTlsConfig
from server.domain import Edge, Interaction, ItemRecord, UserProfile
from server.gen.recd.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
)
from server.security.credentials import authorized
from server.security.tls import aio_channel

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def allowed_values(filter_: Mapping[str, Sequence[str]]) -> dict[str, common_pb2.AllowedValues]:
    return {name: common_pb2.AllowedValues(values=list(values)) for name, values in filter_.items()}


class RecdClient:
    def __init__(self, address: str, timeout_s: float = 30.0, tls: ClientTlsConfig | None = None) -> None:
        """`tls`: how to reach the frontend (the config's server.client_tls; None: plaintext)."""
        self.channel = authorized(
            aio_channel(
                address,
                tls,
                where="server.client_tls",
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
        )
        self.recommender = recommender_pb2_grpc.RecommenderStub(self.channel)
        self.catalog = catalog_pb2_grpc.CatalogStub(self.channel)
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self.channel.close()

    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        filter_: Mapping[str, Sequence[str]] | None = None,
        diversity: float = 0.0,
        context: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
        timeout_s: float | None = None,
        include_seen: bool = False,
    ) -> recommender_pb2.RecommendResponse:
        request = recommender_pb2.RecommendRequest(
            user_id=user_id,
            k=k,
            filter=allowed_values(filter_ or {}),
            diversity=diversity,
            context=dict(context or {}),
            exclude_item_ids=list(exclude),
            include_seen=include_seen,
        )
        return await self.recommender.Recommend(request, timeout=timeout_s or self.timeout_s)

    async def similar(
        self, item_id: str, k: int = 10, filter_: Mapping[str, Sequence[str]] | None = None
    ) -> recommender_pb2.SimilarItemsResponse:
        request = recommender_pb2.SimilarItemsRequest(
            item_id=item_id, k=k, filter=allowed_values(filter_ or {})
        )
        return await self.recommender.SimilarItems(request, timeout=self.timeout_s)

    # CatalogWriter (server.tools.loading.load) ------------------------------------------------------
    async def upsert_items(self, items: list[ItemRecord]) -> int:
        request = catalog_pb2.UpsertItemsRequest(
            items=[
                catalog_pb2.Item(
                    item_id=i.item_id,
                    embedding=i.embedding.tolist(),
                    attributes=i.attributes,
                    popularity=i.popularity,
                    created_at_ms=i.created_at_ms,
                )
                for i in items
            ]
        )
        response = await self.catalog.UpsertItems(request, timeout=self.timeout_s)
        return int(response.upserted)

    async def delete_items(self, item_ids: list[str]) -> int:
        request = catalog_pb2.DeleteItemsRequest(item_ids=item_ids)
        return int((await self.catalog.DeleteItems(request, timeout=self.timeout_s)).deleted)

    async def get_items(self, item_ids: list[str]) -> tuple[list[str], list[str]]:
        """(ids found, ids missing): what this frontend's catalogue holds of `item_ids`."""
        request = catalog_pb2.GetItemsRequest(item_ids=item_ids)
        response = await self.catalog.GetItems(request, timeout=self.timeout_s)
        return [i.item_id for i in response.items], list(response.missing_item_ids)

    async def upsert_users(self, users: list[UserProfile]) -> int:
        request = catalog_pb2.UpsertUsersRequest(
            users=[
                catalog_pb2.User(
                    user_id=u.user_id,
                    embedding=[] if u.embedding is None else u.embedding.tolist(),
                    attributes=u.attributes,
                )
                for u in users
            ]
        )
        response = await self.catalog.UpsertUsers(request, timeout=self.timeout_s)
        return int(response.upserted)

    async def delete_user(self, user_id: str) -> None:
        """Erases what is held about the user (durable once this returns)."""
        request = catalog_pb2.DeleteUserRequest(user_id=user_id)
        await self.catalog.DeleteUser(request, timeout=self.timeout_s)

    async def delete_users(self, user_ids: list[str]) -> int:
        """Erases a batch of users; returns the distinct ids erased."""
        request = catalog_pb2.DeleteUsersRequest(user_ids=user_ids)
        return int((await self.catalog.DeleteUsers(request, timeout=self.timeout_s)).erased)

    async def get_user(self, user_id: str, max_interactions: int = 0) -> catalog_pb2.GetUserResponse:
        """What is held about the user (for an access request); 0 interactions means the default."""
        request = catalog_pb2.GetUserRequest(user_id=user_id, max_interactions=max_interactions)
        return await self.catalog.GetUser(request, timeout=self.timeout_s)

    async def record_interactions(self, interactions: list[Interaction]) -> int:
        request = recommender_pb2.RecordInteractionsRequest(
            interactions=[
                recommender_pb2.Interaction(
                    user_id=x.user_id,
                    item_id=x.item_id,
                    action=x.action,
                    weight=x.weight,
                    timestamp_ms=x.timestamp_ms,
                )
                for x in interactions
            ]
        )
        response = await self.recommender.RecordInteractions(request, timeout=self.timeout_s)
        return int(response.accepted)

    async def upsert_edges(self, edges: list[Edge]) -> int:
        request = catalog_pb2.UpsertEdgesRequest(
            edges=[
                catalog_pb2.Edge(src_item_id=e.src_item_id, dst_item_id=e.dst_item_id, score=e.score)
                for e in edges
            ]
        )
        response = await self.catalog.UpsertEdges(request, timeout=self.timeout_s)
        return int(response.upserted)

    async def stats(self) -> catalog_pb2.StatsResponse:
        return await self.catalog.Stats(catalog_pb2.StatsRequest(), timeout=self.timeout_s)

    async def experiment_outcomes(
        self, experiment: str, since_ms: int = 0
    ) -> catalog_pb2.ExperimentOutcomesResponse:
        request = catalog_pb2.ExperimentOutcomesRequest(experiment=experiment, since_ms=since_ms)
        return await self.catalog.AdminExperimentOutcomes(request, timeout=self.timeout_s)
