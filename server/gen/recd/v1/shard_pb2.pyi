from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardRecord(_message.Message):
    __slots__ = ("label", "item_id", "vector", "payload")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    label: int
    item_id: str
    vector: bytes
    payload: bytes
    def __init__(self, label: _Optional[int] = ..., item_id: _Optional[str] = ..., vector: _Optional[bytes] = ..., payload: _Optional[bytes] = ...) -> None: ...

class ShardRecords(_message.Message):
    __slots__ = ("shard_id", "records")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    records: _containers.RepeatedCompositeFieldContainer[ShardRecord]
    def __init__(self, shard_id: _Optional[int] = ..., records: _Optional[_Iterable[_Union[ShardRecord, _Mapping]]] = ...) -> None: ...

class ShardSearchRequest(_message.Message):
    __slots__ = ("queries", "n_queries", "dim", "shard_ids", "k", "ef", "exclude", "constraints")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    N_QUERIES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SHARD_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    queries: bytes
    n_queries: int
    dim: int
    shard_ids: _containers.RepeatedScalarFieldContainer[int]
    k: int
    ef: int
    exclude: _containers.RepeatedCompositeFieldContainer[LabelList]
    constraints: _containers.RepeatedCompositeFieldContainer[QueryConstraints]
    def __init__(self, queries: _Optional[bytes] = ..., n_queries: _Optional[int] = ..., dim: _Optional[int] = ..., shard_ids: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., ef: _Optional[int] = ..., exclude: _Optional[_Iterable[_Union[LabelList, _Mapping]]] = ..., constraints: _Optional[_Iterable[_Union[QueryConstraints, _Mapping]]] = ...) -> None: ...

class LabelList(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, labels: _Optional[_Iterable[int]] = ...) -> None: ...

class QueryConstraints(_message.Message):
    __slots__ = ("exclude_labels", "filter")
    EXCLUDE_LABELS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    exclude_labels: bytes
    filter: _containers.RepeatedCompositeFieldContainer[AttributeValues]
    def __init__(self, exclude_labels: _Optional[bytes] = ..., filter: _Optional[_Iterable[_Union[AttributeValues, _Mapping]]] = ...) -> None: ...

class AttributeValues(_message.Message):
    __slots__ = ("attribute", "values")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, attribute: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardSearchResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardHits]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardHits, _Mapping]]] = ...) -> None: ...

class ShardHits(_message.Message):
    __slots__ = ("shard_id", "ok", "error", "labels", "scores")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    ok: bool
    error: str
    labels: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shard_id: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., labels: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ShardUpsertRequest(_message.Message):
    __slots__ = ("batches", "layout_epoch", "backfill")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[ShardRecords]
    layout_epoch: int
    backfill: bool
    def __init__(self, batches: _Optional[_Iterable[_Union[ShardRecords, _Mapping]]] = ..., layout_epoch: _Optional[int] = ..., backfill: _Optional[bool] = ...) -> None: ...

class ShardUpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class ShardDeleteRequest(_message.Message):
    __slots__ = ("shard_id", "labels", "layout_epoch")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    layout_epoch: int
    def __init__(self, shard_id: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ..., layout_epoch: _Optional[int] = ...) -> None: ...

class ShardDeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ShardFetchRequest(_message.Message):
    __slots__ = ("shard_id", "labels")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, shard_id: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class ShardFetchResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ShardRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ShardRecord, _Mapping]]] = ...) -> None: ...

class ShardScanRequest(_message.Message):
    __slots__ = ("shard_id", "batch_size")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    batch_size: int
    def __init__(self, shard_id: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ShardStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardStatsResponse(_message.Message):
    __slots__ = ("shards", "dim", "node_name", "layout_epoch")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStats]
    dim: int
    node_name: str
    layout_epoch: int
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ..., dim: _Optional[int] = ..., node_name: _Optional[str] = ..., layout_epoch: _Optional[int] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("shard_id", "items", "deleted", "capacity", "wal_bytes")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    items: int
    deleted: int
    capacity: int
    wal_bytes: int
    def __init__(self, shard_id: _Optional[int] = ..., items: _Optional[int] = ..., deleted: _Optional[int] = ..., capacity: _Optional[int] = ..., wal_bytes: _Optional[int] = ...) -> None: ...

class ShardGetLayoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardSetLayoutRequest(_message.Message):
    __slots__ = ("layout_json", "drop_unplaced")
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    DROP_UNPLACED_FIELD_NUMBER: _ClassVar[int]
    layout_json: str
    drop_unplaced: bool
    def __init__(self, layout_json: _Optional[str] = ..., drop_unplaced: _Optional[bool] = ...) -> None: ...

class ShardLayout(_message.Message):
    __slots__ = ("epoch", "layout_json", "shard_ids", "node_name", "incarnation")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    SHARD_IDS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    layout_json: str
    shard_ids: _containers.RepeatedScalarFieldContainer[int]
    node_name: str
    incarnation: int
    def __init__(self, epoch: _Optional[int] = ..., layout_json: _Optional[str] = ..., shard_ids: _Optional[_Iterable[int]] = ..., node_name: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ShardChangesRequest(_message.Message):
    __slots__ = ("shard_id", "incarnation", "after_lsn")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    AFTER_LSN_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    incarnation: int
    after_lsn: int
    def __init__(self, shard_id: _Optional[int] = ..., incarnation: _Optional[int] = ..., after_lsn: _Optional[int] = ...) -> None: ...

class ShardChange(_message.Message):
    __slots__ = ("lsn", "applied_at", "upserts", "deleted_labels")
    LSN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    DELETED_LABELS_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    applied_at: float
    upserts: _containers.RepeatedCompositeFieldContainer[ShardRecord]
    deleted_labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lsn: _Optional[int] = ..., applied_at: _Optional[float] = ..., upserts: _Optional[_Iterable[_Union[ShardRecord, _Mapping]]] = ..., deleted_labels: _Optional[_Iterable[int]] = ...) -> None: ...

class ShardChanges(_message.Message):
    __slots__ = ("incarnation", "position", "reset", "changes")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    position: int
    reset: bool
    changes: _containers.RepeatedCompositeFieldContainer[ShardChange]
    def __init__(self, incarnation: _Optional[int] = ..., position: _Optional[int] = ..., reset: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[ShardChange, _Mapping]]] = ...) -> None: ...
