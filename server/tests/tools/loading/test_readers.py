from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from server.domain import Edge, Interaction, ItemRecord, UserProfile
from server.tools.loading.readers import read_edges, read_interactions, read_items, read_records, read_users

DIM = 4

ITEMS = [
    ItemRecord(
        f"i{k}",
        np.array([k / 8, -k / 4, 0.5, 1.0 + k], dtype=np.float32),
        {"category": f"c{k % 3}", "lang": "en"} if k % 4 else {},
        popularity=k / 16,
        created_at_ms=1_700_000_000_000 + k,
    )
    for k in range(7)
]
USERS = [
    UserProfile(f"u{k}", np.array([k, 0.25, -0.5, 2], dtype=np.float32) if k % 2 else None, {"lang": "de"})
    for k in range(5)
]
INTERACTIONS = [
    Interaction(f"u{k % 3}", f"i{k}", ("view", "click", "purchase")[k % 3], float(1 + k % 3), 1_000 + k)
    for k in range(6)
]
EDGES = [Edge(f"i{k}", f"i{k + 1}", k / 8) for k in range(5)]


def norm(record: Any) -> tuple[Any, ...]:
    """A record as plain values, so records with arrays compare with ==."""
    values = []
    for name in record.__slots__:
        value = getattr(record, name)
        values.append(value.tolist() if isinstance(value, np.ndarray) else value)
    return tuple(values)


def write_parquet(directory: Path) -> None:
    vectors = np.stack([i.embedding for i in ITEMS])
    pq.write_table(
        pa.table(
            {
                "item_id": [i.item_id for i in ITEMS],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
                "attributes": pa.array(
                    [list(i.attributes.items()) for i in ITEMS], pa.map_(pa.string(), pa.string())
                ),
                "popularity": pa.array([i.popularity for i in ITEMS], pa.float32()),
                "created_at_ms": pa.array([i.created_at_ms for i in ITEMS], pa.int64()),
            }
        ),
        directory / "items.parquet",
        row_group_size=3,
    )
    pq.write_table(
        pa.table(
            {
                "user_id": [u.user_id for u in USERS],
                "embedding": pa.array(
                    [None if u.embedding is None else u.embedding.tolist() for u in USERS],
                    pa.list_(pa.float32()),
                ),
                "attributes": pa.array(
                    [list(u.attributes.items()) for u in USERS], pa.map_(pa.string(), pa.string())
                ),
            }
        ),
        directory / "users.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([vars_of(i) for i in INTERACTIONS]), directory / "interactions.parquet"
    )
    pq.write_table(pa.Table.from_pylist([vars_of(e) for e in EDGES]), directory / "edges.parquet")


def vars_of(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def write_csv(directory: Path) -> None:
    def write(name: str, header: list[str], rows: list[list[Any]]) -> None:
        with open(directory / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    # Items: space-separated embedding, attributes as plain extra columns.
    write(
        "items.csv",
        ["item_id", "embedding", "popularity", "created_at_ms", "category", "lang"],
        [
            [
                i.item_id,
                " ".join(repr(float(x)) for x in i.embedding),
                i.popularity,
                i.created_at_ms,
                i.attributes.get("category", ""),
                i.attributes.get("lang", ""),
            ]
            for i in ITEMS
        ],
    )
    # Users: bracketed comma-separated embedding (empty: none), attributes as a JSON column.
    write(
        "users.csv",
        ["user_id", "embedding", "attributes"],
        [
            [
                u.user_id,
                "" if u.embedding is None else "[" + ", ".join(repr(float(x)) for x in u.embedding) + "]",
                json.dumps(u.attributes),
            ]
            for u in USERS
        ],
    )
    write("interactions.csv", list(INTERACTIONS[0].__slots__), [list(norm(i)) for i in INTERACTIONS])
    write("edges.csv", list(EDGES[0].__slots__), [list(norm(e)) for e in EDGES])


def write_jsonl(directory: Path) -> None:
    for name, records in (
        ("items", ITEMS),
        ("users", USERS),
        ("interactions", INTERACTIONS),
        ("edges", EDGES),
    ):
        with open(directory / f"{name}.jsonl", "w") as f:
            for record in records:
                f.write(json.dumps(dict(zip(record.__slots__, norm(record), strict=True))) + "\n")
            f.write("\n")  # blank lines are skipped


WRITERS = {"parquet": write_parquet, "csv": write_csv, "jsonl": write_jsonl}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_all_kinds_round_trip(fmt: str, tmp_path: Path) -> None:
    WRITERS[fmt](tmp_path)
    cases: list[tuple[str, Callable[[Path, int], Iterator[list[Any]]], list[Any]]] = [
        ("items", read_items, ITEMS),
        ("users", read_users, USERS),
        ("interactions", read_interactions, INTERACTIONS),
        ("edges", read_edges, EDGES),
    ]
    for kind, reader, expected in cases:
        batches = list(reader(tmp_path / f"{kind}.{fmt}", 2))
        assert [len(b) for b in batches] == [2] * (len(expected) // 2) + [1] * (len(expected) % 2)
        got = [norm(r) for batch in batches for r in batch]
        assert got == [norm(r) for r in expected], kind


def test_read_records_dispatches_by_kind(tmp_path: Path) -> None:
    write_jsonl(tmp_path)
    (batch,) = read_records(tmp_path / "edges.jsonl", "edges", batch_size=100)
    assert [norm(e) for e in batch] == [norm(e) for e in EDGES]


def test_parquet_embeddings_are_float32_arrays(tmp_path: Path) -> None:
    write_parquet(tmp_path)
    (batch,) = read_items(tmp_path / "items.parquet", 100)
    assert all(i.embedding.dtype == np.float32 and i.embedding.shape == (DIM,) for i in batch)


def test_defaults_for_optional_fields(tmp_path: Path) -> None:
    path = tmp_path / "interactions.jsonl"
    path.write_text('{"user_id": "u", "item_id": "i", "timestamp_ms": 5}\n')
    (batch,) = read_interactions(path)
    assert batch == [Interaction("u", "i", "view", 1.0, 5)]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "items.csv",
            "item_id,embedding\ni1,1 2 3\ni2,1 two 3\n",
            r"items\.csv: row 2 \(line 3\), field 'embedding': expected numbers",
        ),
        (
            "items.jsonl",
            '{"item_id": "i1", "embedding": [1, 2]}\n\n{"item_id": "i2", "embedding": [1, NaN]}\n',
            r"items\.jsonl: row 2 \(line 3\), field 'embedding': has a non-finite value",
        ),
        (
            "edges.jsonl",
            '{"src_item_id": "a", "dst_item_id": "b"}\n',
            r"row 1 \(line 1\), field 'score': missing",
        ),
        ("interactions.jsonl", "[1, 2]\n", r"row 1 \(line 1\), field '\(row\)': expected a JSON object"),
        (
            "interactions.csv",
            "user_id,item_id,timestamp_ms\nu,i,12.5\n",
            r"row 1 \(line 2\), field 'timestamp_ms': expected an integer",
        ),
        ("users.csv", 'user_id,attributes\nu1,"{""a"": [1]}"\n', r"row 1 \(line 2\), field 'attributes'"),
        (
            "edges.csv",
            "src_item_id,dst_item_id,score\na,b,0.5,extra\n",
            r"row 1 \(line 2\), field '\(row\)': 4 cells",
        ),
    ],
)
def test_malformed_rows_name_file_row_and_field(
    name: str, content: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_text(content)
    kind = name.split(".")[0]
    with pytest.raises(ValueError, match=expected):
        list(read_records(path, kind, batch_size=1))  # type: ignore[arg-type]


def test_malformed_parquet_row_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "edges.parquet"
    pq.write_table(
        pa.table({"src_item_id": ["a", "b", None], "dst_item_id": ["b", "c", "d"], "score": [1.0] * 3}), path
    )
    with pytest.raises(ValueError, match=r"edges\.parquet: row 3, field 'src_item_id': missing"):
        list(read_edges(path))


def test_unknown_suffix_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "items.xml"
    path.write_text("<items/>")
    with pytest.raises(ValueError, match="unknown file type"):
        list(read_items(path))
