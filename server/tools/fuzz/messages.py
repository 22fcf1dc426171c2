"""Hypothesis strategies for requests, built from the message descriptors (so a field or an RPC added to
the protos is fuzzed at once): structured messages with adversarial values, and raw bytes (random, or a
structured message's encoding damaged the ways a broken or hostile client would damage it)."""

from __future__ import annotations

import math
import struct
from typing import Any, Literal

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

_F = FieldDescriptor
# Values that sit on the limits and in the corners: empty, over 256 bytes, multi-byte, NUL, ids of the toy
# catalogue, attribute names it filters on.
_STRINGS = ["", "u1", "i00001", "i00002", "lang", "en", "category", "c1", "x" * 257, "é" * 129, "\x00", "a b"]
_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-45,
    1e-40,
    1e-30,
    1e-20,
    65504.0,
    65520.0,
    3.0e38,
    math.inf,
    -math.inf,
]
_INT_RANGES = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}
# Repeated fields and maps stay short: what lies past the size limits is tested by the bad-input tables.
MAX_REPEATED = 6


def _text() -> st.SearchStrategy[str]:
    # Surrogates cannot be encoded as UTF-8, so no client can send them as a string.
    return st.one_of(
        st.sampled_from(_STRINGS), st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
    )


def _integer(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field.type]
    edges = sorted(v for v in {low, high, 0, 1, 3, 10, 1000, 1001, 2**31 - 1, 2**32} if low <= v <= high)
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 2000))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == _F.TYPE_STRING:
        return _text()
    if t == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == _F.TYPE_BOOL:
        return st.booleans()
    if t in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
        width: Literal[32, 64] = 32 if t == _F.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from(_FLOATS), st.floats(width=width), st.floats(-2.0, 2.0, width=width))
    if t == _F.TYPE_ENUM:
        # proto3 enums are open: numbers the enum does not name are valid on the wire.
        return st.one_of(st.sampled_from([v.number for v in _enum(field).values]), st.integers(-5, 50))
    return _integer(field)


# Values a well-behaved client sends: they carry a request past validation into the pipeline and stores.
_PLAUSIBLE_STRINGS = ["u1", "u2", "i00001", "i00002", "i00003", "lang", "en", "de", "category", "c1", "view"]


def _plausible_scalar(field: FieldDescriptor, dim: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == _F.TYPE_STRING:
        return st.one_of(
            st.sampled_from(_PLAUSIBLE_STRINGS), st.text("abcdefghij0123456789", min_size=1, max_size=12)
        )
    if t in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
        return st.floats(0.0625, 1.0, width=32 if t == _F.TYPE_FLOAT else 64)
    if t == _F.TYPE_ENUM or t in _INT_RANGES:
        # Counts and sizes (a batch of one query, the dimension) besides small numbers.
        return st.one_of(st.sampled_from([1, dim]), st.integers(0, 20))
    if t == _F.TYPE_BYTES:
        # One float32 vector of the dimension: what the Shard API's packed query fields carry.
        return st.lists(st.floats(-1.0, 1.0, width=32), min_size=dim, max_size=dim).map(
            lambda v: struct.pack(f"<{len(v)}f", *v)
        )
    return _scalar(field)


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _enum(field: FieldDescriptor) -> EnumDescriptor:
    assert field.enum_type is not None, field.full_name
    return field.enum_type


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _F.TYPE_MESSAGE and bool(_message_type(field).GetOptions().map_entry)


def _repeated_floats(field: FieldDescriptor, dim: int, plausible: bool) -> st.SearchStrategy[list[float]]:
    # An embedding of the deployment's dimension reaches the value checks; other lengths the dimension check.
    direction = st.lists(
        st.floats(-1.0, 1.0, width=32).filter(lambda v: abs(v) > 1e-3), min_size=dim, max_size=dim
    )
    # Every value finite, in the FP16 range and not all zero, yet the whole too small (or large) to
    # normalise: what a model emitting a near-zero vector sends.
    scaled = st.builds(_scale, direction, st.sampled_from([1e-45, 1e-40, 1e-30, 1e-20, 1e-19, 1e4]))
    if plausible:
        return st.one_of(direction, scaled)
    element = _scalar(field)
    return st.one_of(
        st.lists(element, min_size=dim, max_size=dim),
        st.lists(st.sampled_from(_FLOATS), min_size=dim, max_size=dim),
        st.sampled_from(_FLOATS).map(lambda v: [v] * dim),
        st.lists(element, max_size=dim + 2),
    )


def _scale(values: list[float], factor: float) -> list[float]:
    return [v * factor for v in values]


def _field(field: FieldDescriptor, dim: int, depth: int, plausible: bool) -> st.SearchStrategy[Any]:
    def scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
        return _plausible_scalar(f, dim) if plausible else _scalar(f)

    size = 3 if plausible else MAX_REPEATED
    if _is_map(field):
        key_field = _message_type(field).fields_by_name["key"]
        value_field = _message_type(field).fields_by_name["value"]
        value = (
            _messages(_message_type(value_field), dim, depth + 1, plausible)
            if value_field.type == _F.TYPE_MESSAGE
            else scalar(value_field)
        )
        return st.dictionaries(scalar(key_field), value, max_size=size)
    if field.type == _F.TYPE_MESSAGE:
        element = _messages(_message_type(field), dim, depth + 1, plausible)
    else:
        element = scalar(field)
    if field.is_repeated:
        if field.type in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
            return _repeated_floats(field, dim, plausible)
        return st.lists(element, min_size=1 if plausible else 0, max_size=size)
    return element


def _build(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name) if field.is_repeated else None
        if _is_map(field):
            message_valued = _message_type(field).fields_by_name["value"].type == _F.TYPE_MESSAGE
            for key, item in value.items():
                if message_valued:
                    target[key].CopyFrom(item)  # type: ignore[index]
                else:
                    target[key] = item  # type: ignore[index]
        elif target is not None:
            target.extend(value)
        elif field.type == _F.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _messages(descriptor: Descriptor, dim: int, depth: int, plausible: bool) -> st.SearchStrategy[Message]:
    if depth > 4:
        return st.just(message_factory.GetMessageClass(descriptor)())

    def field_values(field: FieldDescriptor) -> st.SearchStrategy[Any]:
        # Deferred: strategies for nested messages are built when first drawn, not all up front.
        return st.deferred(lambda: _field(field, dim, depth, plausible))

    fields = {f.name: field_values(f) for f in descriptor.fields}
    chosen = st.fixed_dictionaries(fields) if plausible else st.fixed_dictionaries({}, optional=fields)
    return chosen.map(lambda values: _build(descriptor, values))


def messages(descriptor: Descriptor, dim: int) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` (`dim`: the deployment's embedding dimension): adversarial ones (any
    subset of fields, values in the corners), and plausible ones (every field set, values a
    well-behaved client sends) that get past validation into the code behind it."""
    return st.one_of(_messages(descriptor, dim, 0, False), _messages(descriptor, dim, 0, True))


def _string_field_numbers(descriptor: Descriptor) -> list[int]:
    return [f.number for f in descriptor.fields if f.type == _F.TYPE_STRING and f.number < 16]


def _damage(encoded: bytes, how: str, at: int, noise: bytes, string_fields: list[int]) -> bytes:
    cut = at % (len(encoded) + 1)
    if how == "truncate":
        return encoded[:cut]
    if how == "flip" and encoded:
        i = at % len(encoded)
        return encoded[:i] + bytes([encoded[i] ^ (1 << (at % 8))]) + encoded[i + 1 :]
    if how == "insert":
        return encoded[:cut] + noise + encoded[cut:]
    if how == "bad-utf8" and string_fields:
        # A string field appended with bytes that are not UTF-8 (the last occurrence of a field wins).
        number = string_fields[at % len(string_fields)]
        return encoded + bytes([number << 3 | 2, 2]) + b"\xc3\x28"
    if how == "huge-length":
        # A length-delimited field claiming ~4 GB.
        return encoded + b"\x0a\xff\xff\xff\xff\x0f" + noise
    if how == "deep-nesting":
        # Groups nested past the parser's recursion limit.
        return b"\x0b" * 200 + encoded
    return encoded + noise


DAMAGE = ["truncate", "flip", "insert", "bad-utf8", "huge-length", "deep-nesting", "append"]


def _encode(message: Message) -> bytes:
    return message.SerializeToString()


def raw_requests(descriptor: Descriptor, dim: int) -> st.SearchStrategy[bytes]:
    """Bytes sent as a `descriptor` request: random, or a valid encoding damaged one of the DAMAGE ways."""
    string_fields = _string_field_numbers(descriptor)
    damaged = st.builds(
        _damage,
        messages(descriptor, dim).map(_encode),
        st.sampled_from(DAMAGE),
        st.integers(0, 2**16),
        st.binary(min_size=1, max_size=8),
        st.just(string_fields),
    )
    return st.one_of(st.binary(max_size=96), damaged)
