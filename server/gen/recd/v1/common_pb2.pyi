from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_ANN: _ClassVar[Source]
    SOURCE_GRAPH: _ClassVar[Source]
    SOURCE_POPULAR: _ClassVar[Source]
SOURCE_UNSPECIFIED: Source
SOURCE_ANN: Source
SOURCE_GRAPH: Source
SOURCE_POPULAR: Source

class AllowedValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreComponents(_message.Message):
    __slots__ = ("similarity", "graph", "popularity", "freshness")
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    similarity: float
    graph: float
    popularity: float
    freshness: float
    def __init__(self, similarity: _Optional[float] = ..., graph: _Optional[float] = ..., popularity: _Optional[float] = ..., freshness: _Optional[float] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "sources", "components")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    sources: _containers.RepeatedScalarFieldContainer[Source]
    components: ScoreComponents
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[Source, str]]] = ..., components: _Optional[_Union[ScoreComponents, _Mapping]] = ...) -> None: ...

class Coverage(_message.Message):
    __slots__ = ("shards_total", "shards_ok", "partial", "degraded_reasons")
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_OK_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    shards_total: int
    shards_ok: int
    partial: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shards_total: _Optional[int] = ..., shards_ok: _Optional[int] = ..., partial: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ...) -> None: ...
