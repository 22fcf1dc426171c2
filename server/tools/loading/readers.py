"""Streaming readers that turn dataset files into batches of domain objects.

Formats, chosen by file suffix:

- Parquet (`.parquet`, `.pq`): columns named as the domain fields; `embedding` a list or fixed-size list of
  floats, `attributes` a map<string,string> (or a JSON string). Read batch by batch (`iter_batches`).
- CSV (`.csv`): a header row; `embedding` one column holding the numbers separated by spaces or commas
  (optionally in brackets); `attributes` an optional JSON object column; any other column is taken as an
  attribute too, since a flat file has no map type (empty cells are skipped).
- JSONL (`.jsonl`, `.ndjson`): one JSON object per line, with the field names as keys; blank lines skipped.

A malformed row raises ValueError naming the file, the row (1-based, data rows only; plus the line for text
formats) and the field, so the operator can fix the input rather than guess.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from server.domain import Edge, Interaction, ItemRecord, UserProfile, Vector

Kind = Literal["items", "users", "interactions", "edges"]
KINDS: tuple[Kind, ...] = ("items", "users", "interactions", "edges")
Format = Literal["parquet", "csv", "jsonl"]

_SUFFIXES: dict[str, Format] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

# The fields of each kind; in CSV, any other column is an attribute.
FIELDS: dict[Kind, tuple[str, ...]] = {
    "items": ("item_id", "embedding", "attributes", "popularity", "created_at_ms"),
    "users": ("user_id", "embedding", "attributes"),
    "interactions": ("user_id", "item_id", "action", "weight", "timestamp_ms"),
    "edges": ("src_item_id", "dst_item_id", "score"),
}

T = TypeVar("T")


def file_format(path: Path) -> Format:
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown file type {path.suffix!r} (expected one of {sorted(_SUFFIXES)})")
    return fmt


def read_items(path: Path, batch_size: int = 1000) -> Iterator[list[ItemRecord]]:
    return _batches(path, "items", _item, batch_size)


def read_users(path: Path, batch_size: int = 1000) -> Iterator[list[UserProfile]]:
    return _batches(path, "users", _user, batch_size)


def read_interactions(path: Path, batch_size: int = 1000) -> Iterator[list[Interaction]]:
    return _batches(path, "interactions", _interaction, batch_size)


def read_edges(path: Path, batch_size: int = 1000) -> Iterator[list[Edge]]:
    return _batches(path, "edges", _edge, batch_size)


def read_records(
    path: Path, kind: Kind, batch_size: int = 1000, skipped: list[ValueError] | None = None
) -> Iterator[list[Any]]:
    """Batches of the domain objects of `kind` read from `path`. With `skipped`, a row with a malformed
    field (a missing timestamp, a weight that is no number) is left out and its error appended there,
    instead of ending the file; a file that cannot be parsed at all (invalid JSON, a CSV row of the
    wrong width) still raises."""
    converters: dict[Kind, RowConverter[Any]] = {
        "items": _item,
        "users": _user,
        "interactions": _interaction,
        "edges": _edge,
    }
    return _batches(Path(path), kind, converters[kind], batch_size, skipped)


def count_rows(path: Path) -> int | None:
    """Rows in the file when that is known without reading it (Parquet metadata), else None."""
    if file_format(Path(path)) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


# --- row sources --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Where:
    path: Path
    row: int
    line: int | None = None

    def error(self, field: str, problem: str) -> ValueError:
        line = f" (line {self.line})" if self.line is not None else ""
        return ValueError(f"{self.path}: row {self.row}{line}, field {field!r}: {problem}")


Row = dict[str, Any]
RowConverter = Callable[[Row, _Where], T]


def _batches(
    path: Path,
    kind: Kind,
    convert: RowConverter[T],
    batch_size: int,
    skipped: list[ValueError] | None = None,
) -> Iterator[list[T]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sources = {"parquet": _parquet_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}
    batch: list[T] = []
    for where, row in sources[file_format(path)](path, kind, batch_size):
        try:
            batch.append(convert(row, where))
        except ValueError as exc:
            if skipped is None:
                raise
            skipped.append(exc)
            continue
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parquet_rows(path: Path, kind: Kind, batch_size: int) -> Iterator[tuple[_Where, Row]]:
    parquet = pq.ParquetFile(path)
    present = set(parquet.schema_arrow.names)
    columns = [name for name in FIELDS[kind] if name in present]
    row = 0
    for record_batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        values: dict[str, list[Any]] = {}
        for name in columns:
            column = record_batch.column(name)
            values[name] = _vectors(column) if name == "embedding" else column.to_pylist()
        for i in range(record_batch.num_rows):
            row += 1
            yield _Where(path, row), {name: values[name][i] for name in columns}


def _vectors(column: pa.Array) -> list[Any]:
    """A list column as one float32 array sliced per row, instead of a Python float per element."""
    if pa.types.is_fixed_size_list(column.type):
        size = column.type.list_size
        flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        starts = (np.arange(len(column)) + column.offset) * size
        ends = starts + size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        offsets = column.offsets.to_numpy()
        starts, ends = offsets[:-1], offsets[1:]
    else:
        return column.to_pylist()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [flat[s:e] if ok else None for s, e, ok in zip(starts.tolist(), ends.tolist(), valid, strict=True)]


def _csv_rows(path: Path, kind: Kind, batch_size: int) -> Iterator[tuple[_Where, Row]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        extra = [name for name in reader.fieldnames if name not in FIELDS[kind]]
        for row_number, raw in enumerate(reader, start=1):
            where = _Where(path, row_number, reader.line_num)
            if None in raw:
                cells = len(reader.fieldnames) + len(raw[None])
                raise where.error("(row)", f"{cells} cells but the header has {len(reader.fieldnames)}")
            row: Row = {name: value for name, value in raw.items() if name in FIELDS[kind] and value != ""}
            if kind in ("items", "users"):
                attributes = _attributes(row.get("attributes"), where)
                for name in extra:
                    if raw[name]:
                        attributes[name] = raw[name]
                row["attributes"] = attributes
            yield where, row


def _jsonl_rows(path: Path, kind: Kind, batch_size: int) -> Iterator[tuple[_Where, Row]]:
    with open(path, encoding="utf-8") as f:
        row_number = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row_number += 1
            where = _Where(path, row_number, line_number)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise where.error("(row)", f"not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise where.error("(row)", f"expected a JSON object, got {type(row).__name__}")
            yield where, row


# --- row converters -----------------------------------------------------------------------------------
def _item(row: Row, where: _Where) -> ItemRecord:
    embedding = _vector(row.get("embedding"), where, "embedding")
    if embedding is None:
        raise where.error("embedding", "missing")
    return ItemRecord(
        item_id=_id(row, "item_id", where),
        embedding=embedding,
        attributes=_attributes(row.get("attributes"), where),
        popularity=_float(row, "popularity", where, default=0.0),
        created_at_ms=_int(row, "created_at_ms", where, default=0),
    )


def _user(row: Row, where: _Where) -> UserProfile:
    return UserProfile(
        user_id=_id(row, "user_id", where),
        embedding=_vector(row.get("embedding"), where, "embedding"),
        attributes=_attributes(row.get("attributes"), where),
    )


def _interaction(row: Row, where: _Where) -> Interaction:
    action = row.get("action", "view")
    if not isinstance(action, str) or not action:
        raise where.error("action", f"expected a non-empty string, got {action!r}")
    return Interaction(
        user_id=_id(row, "user_id", where),
        item_id=_id(row, "item_id", where),
        action=action,
        weight=_float(row, "weight", where, default=1.0),
        timestamp_ms=_int(row, "timestamp_ms", where),
    )


def _edge(row: Row, where: _Where) -> Edge:
    return Edge(
        src_item_id=_id(row, "src_item_id", where),
        dst_item_id=_id(row, "dst_item_id", where),
        score=_float(row, "score", where),
    )


def _id(row: Row, field: str, where: _Where) -> str:
    value = row.get(field)
    if value is None:
        raise where.error(field, "missing")
    if not isinstance(value, str) or not value:
        raise where.error(field, f"expected a non-empty string, got {value!r}")
    return value


def _float(row: Row, field: str, where: _Where, default: float | None = None) -> float:
    """A finite float; a missing value is an error unless there is a default."""
    value = row.get(field)
    if value is None:
        if default is None:
            raise where.error(field, "missing")
        return default
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise where.error(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise where.error(field, f"expected a finite number, got {value!r}")
    return number


def _int(row: Row, field: str, where: _Where, default: int | None = None) -> int:
    """An integer (also from "17" or 1.7e12); a missing value is an error unless there is a default."""
    value = row.get(field)
    if value is None:
        if default is None:
            raise where.error(field, "missing")
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        if isinstance(value, str):
            return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise where.error(field, f"expected an integer, got {value!r}")
    return int(number)


def _vector(value: Any, where: _Where, field: str) -> Vector | None:
    """A float32 vector from an array, a list of numbers or a string of numbers; None when absent."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = value.strip().strip("[]").replace(",", " ").split()
            if not parts:
                return None
            vector = np.array(parts, dtype=np.float32)
        else:
            vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise where.error(field, f"expected numbers, got {_preview(value)}") from None
    if vector.ndim != 1:
        raise where.error(field, f"expected a flat list of numbers, got shape {vector.shape}")
    if len(vector) == 0:
        return None
    if not np.isfinite(vector).all():
        raise where.error(field, f"has a non-finite value at position {int(np.argmin(np.isfinite(vector)))}")
    return vector


def _attributes(value: Any, where: _Where) -> dict[str, str]:
    """Attributes from a dict, a list of (key, value) pairs (Arrow maps) or a JSON object string."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise where.error("attributes", f"expected a JSON object, got {_preview(value)}") from None
    pairs = value.items() if isinstance(value, dict) else value
    try:
        attributes = dict(pairs)
    except (TypeError, ValueError):
        raise where.error("attributes", f"expected a map of strings, got {_preview(value)}") from None
    result: dict[str, str] = {}
    for key, item in attributes.items():
        if not isinstance(key, str) or isinstance(item, dict | list) or item is None:
            raise where.error("attributes", f"expected string keys and scalar values, got {key!r}: {item!r}")
        result[key] = item if isinstance(item, str) else json.dumps(item)
    return result


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
