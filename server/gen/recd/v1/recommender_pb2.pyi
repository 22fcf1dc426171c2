from server.gen.recd.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Retrieval(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_UNSPECIFIED: _ClassVar[Retrieval]
    RETRIEVAL_HNSW: _ClassVar[Retrieval]
    RETRIEVAL_HNSW_FILTERED: _ClassVar[Retrieval]
    RETRIEVAL_EXACT_FILTERED: _ClassVar[Retrieval]
RETRIEVAL_UNSPECIFIED: Retrieval
RETRIEVAL_HNSW: Retrieval
RETRIEVAL_HNSW_FILTERED: Retrieval
RETRIEVAL_EXACT_FILTERED: Retrieval

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context", "exclude_item_ids", "filter", "diversity", "include_seen")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.AllowedValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.AllowedValues, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: _containers.ScalarMap[str, str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: _containers.MessageMap[str, _common_pb2.AllowedValues]
    diversity: float
    include_seen: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Mapping[str, str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Mapping[str, _common_pb2.AllowedValues]] = ..., diversity: _Optional[float] = ..., include_seen: _Optional[bool] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "coverage", "cache_key", "cache_ttl_seconds", "model_version", "retrieval", "experiments")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    coverage: _common_pb2.Coverage
    cache_key: str
    cache_ttl_seconds: int
    model_version: str
    retrieval: Retrieval
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentVariant]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., coverage: _Optional[_Union[_common_pb2.Coverage, _Mapping]] = ..., cache_key: _Optional[str] = ..., cache_ttl_seconds: _Optional[int] = ..., model_version: _Optional[str] = ..., retrieval: _Optional[_Union[Retrieval, str]] = ..., experiments: _Optional[_Iterable[_Union[ExperimentVariant, _Mapping]]] = ...) -> None: ...

class ExperimentVariant(_message.Message):
    __slots__ = ("experiment", "variant")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    variant: str
    def __init__(self, experiment: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "filter")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.AllowedValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.AllowedValues, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    filter: _containers.MessageMap[str, _common_pb2.AllowedValues]
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Mapping[str, _common_pb2.AllowedValues]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "coverage", "model_version", "retrieval")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    coverage: _common_pb2.Coverage
    model_version: str
    retrieval: Retrieval
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., coverage: _Optional[_Union[_common_pb2.Coverage, _Mapping]] = ..., model_version: _Optional[str] = ..., retrieval: _Optional[_Union[Retrieval, str]] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("user_id", "item_id", "action", "weight", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    action: str
    weight: float
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., action: _Optional[str] = ..., weight: _Optional[float] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
