from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Item(_message.Message):
    __slots__ = ("item_id", "embedding", "attributes", "popularity", "created_at_ms")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    attributes: _containers.ScalarMap[str, str]
    popularity: float
    created_at_ms: int
    def __init__(self, item_id: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., popularity: _Optional[float] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items", "missing_item_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    missing_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., missing_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("user_id", "embedding", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertUsersRequest(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class UpsertUsersResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteUsersRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteUsersResponse(_message.Message):
    __slots__ = ("erased",)
    ERASED_FIELD_NUMBER: _ClassVar[int]
    erased: int
    def __init__(self, erased: _Optional[int] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("user_id", "max_interactions")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    max_interactions: int
    def __init__(self, user_id: _Optional[str] = ..., max_interactions: _Optional[int] = ...) -> None: ...

class UserInteraction(_message.Message):
    __slots__ = ("item_id", "action", "weight", "timestamp_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    action: str
    weight: float
    timestamp_ms: int
    def __init__(self, item_id: _Optional[str] = ..., action: _Optional[str] = ..., weight: _Optional[float] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class SeenItem(_message.Message):
    __slots__ = ("item_id", "item_hash", "last_seen_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_HASH_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    item_hash: int
    last_seen_ms: int
    def __init__(self, item_id: _Optional[str] = ..., item_hash: _Optional[int] = ..., last_seen_ms: _Optional[int] = ...) -> None: ...

class GetUserResponse(_message.Message):
    __slots__ = ("user_id", "found", "profile", "interactions", "interactions_truncated", "seen", "exposures_held", "outcomes_held")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    EXPOSURES_HELD_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_HELD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    found: bool
    profile: User
    interactions: _containers.RepeatedCompositeFieldContainer[UserInteraction]
    interactions_truncated: bool
    seen: _containers.RepeatedCompositeFieldContainer[SeenItem]
    exposures_held: int
    outcomes_held: int
    def __init__(self, user_id: _Optional[str] = ..., found: _Optional[bool] = ..., profile: _Optional[_Union[User, _Mapping]] = ..., interactions: _Optional[_Iterable[_Union[UserInteraction, _Mapping]]] = ..., interactions_truncated: _Optional[bool] = ..., seen: _Optional[_Iterable[_Union[SeenItem, _Mapping]]] = ..., exposures_held: _Optional[int] = ..., outcomes_held: _Optional[int] = ...) -> None: ...

class Edge(_message.Message):
    __slots__ = ("src_item_id", "dst_item_id", "score")
    SRC_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    DST_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    src_item_id: str
    dst_item_id: str
    score: float
    def __init__(self, src_item_id: _Optional[str] = ..., dst_item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class UpsertEdgesRequest(_message.Message):
    __slots__ = ("edges",)
    EDGES_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(self, edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...) -> None: ...

class UpsertEdgesResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardItemCount(_message.Message):
    __slots__ = ("shard_id", "items", "deleted")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    items: int
    deleted: int
    def __init__(self, shard_id: _Optional[int] = ..., items: _Optional[int] = ..., deleted: _Optional[int] = ...) -> None: ...

class IndexParameters(_message.Message):
    __slots__ = ("space", "m", "ef_construction", "ef_search")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    space: str
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, space: _Optional[str] = ..., m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("items", "shards", "users", "edges", "dimension", "index", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardItemCount]
    users: int
    edges: int
    dimension: int
    index: IndexParameters
    model_version: str
    def __init__(self, items: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardItemCount, _Mapping]]] = ..., users: _Optional[int] = ..., edges: _Optional[int] = ..., dimension: _Optional[int] = ..., index: _Optional[_Union[IndexParameters, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class WatchDeletesRequest(_message.Message):
    __slots__ = ("since_ms",)
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    since_ms: int
    def __init__(self, since_ms: _Optional[int] = ...) -> None: ...

class DeletedItems(_message.Message):
    __slots__ = ("item_ids", "position_ms", "covers_from_ms", "erased_user_ids", "started_ms")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    POSITION_MS_FIELD_NUMBER: _ClassVar[int]
    COVERS_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    ERASED_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    position_ms: int
    covers_from_ms: int
    erased_user_ids: _containers.RepeatedScalarFieldContainer[str]
    started_ms: int
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., position_ms: _Optional[int] = ..., covers_from_ms: _Optional[int] = ..., erased_user_ids: _Optional[_Iterable[str]] = ..., started_ms: _Optional[int] = ...) -> None: ...

class AdminReloadModelRequest(_message.Message):
    __slots__ = ("default_version",)
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    default_version: str
    def __init__(self, default_version: _Optional[str] = ...) -> None: ...

class ModelFileStatus(_message.Message):
    __slots__ = ("path", "outcome", "version", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    outcome: str
    version: str
    error: str
    def __init__(self, path: _Optional[str] = ..., outcome: _Optional[str] = ..., version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AdminReloadModelResponse(_message.Message):
    __slots__ = ("default_version", "versions", "files")
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    default_version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    files: _containers.RepeatedCompositeFieldContainer[ModelFileStatus]
    def __init__(self, default_version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., files: _Optional[_Iterable[_Union[ModelFileStatus, _Mapping]]] = ...) -> None: ...

class ExperimentOutcomesRequest(_message.Message):
    __slots__ = ("experiment", "since_ms")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    since_ms: int
    def __init__(self, experiment: _Optional[str] = ..., since_ms: _Optional[int] = ...) -> None: ...

class UnitTotals(_message.Message):
    __slots__ = ("n", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy")
    N_FIELD_NUMBER: _ClassVar[int]
    SUM_X_FIELD_NUMBER: _ClassVar[int]
    SUM_Y_FIELD_NUMBER: _ClassVar[int]
    SUM_XX_FIELD_NUMBER: _ClassVar[int]
    SUM_YY_FIELD_NUMBER: _ClassVar[int]
    SUM_XY_FIELD_NUMBER: _ClassVar[int]
    n: int
    sum_x: float
    sum_y: float
    sum_xx: float
    sum_yy: float
    sum_xy: float
    def __init__(self, n: _Optional[int] = ..., sum_x: _Optional[float] = ..., sum_y: _Optional[float] = ..., sum_xx: _Optional[float] = ..., sum_yy: _Optional[float] = ..., sum_xy: _Optional[float] = ...) -> None: ...

class VariantOutcomes(_message.Message):
    __slots__ = ("variant", "expected_share", "units", "answers", "impressions", "distinct_items", "actions", "latency_ms", "diversity", "forced_units")
    class ActionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: UnitTotals
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[UnitTotals, _Mapping]] = ...) -> None: ...
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHARE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    FORCED_UNITS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    expected_share: float
    units: int
    answers: int
    impressions: int
    distinct_items: int
    actions: _containers.MessageMap[str, UnitTotals]
    latency_ms: UnitTotals
    diversity: UnitTotals
    forced_units: int
    def __init__(self, variant: _Optional[str] = ..., expected_share: _Optional[float] = ..., units: _Optional[int] = ..., answers: _Optional[int] = ..., impressions: _Optional[int] = ..., distinct_items: _Optional[int] = ..., actions: _Optional[_Mapping[str, UnitTotals]] = ..., latency_ms: _Optional[_Union[UnitTotals, _Mapping]] = ..., diversity: _Optional[_Union[UnitTotals, _Mapping]] = ..., forced_units: _Optional[int] = ...) -> None: ...

class ExperimentOutcomesResponse(_message.Message):
    __slots__ = ("experiment", "enabled", "traffic", "since_ms", "catalogue_items", "variants")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    enabled: bool
    traffic: float
    since_ms: int
    catalogue_items: int
    variants: _containers.RepeatedCompositeFieldContainer[VariantOutcomes]
    def __init__(self, experiment: _Optional[str] = ..., enabled: _Optional[bool] = ..., traffic: _Optional[float] = ..., since_ms: _Optional[int] = ..., catalogue_items: _Optional[int] = ..., variants: _Optional[_Iterable[_Union[VariantOutcomes, _Mapping]]] = ...) -> None: ...
