from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from server.domain import Edge, Interaction, ItemRecord, UserProfile
from server.tools import datagen
from server.tools.loading.load import find_dataset_files, load_dataset


class FakeWriter:
    """Records what arrives, in order; can fail chosen batches and be slow to expose concurrency."""

    def __init__(self, fail_when: str | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.rows: dict[str, list[Any]] = {"items": [], "users": [], "interactions": [], "edges": []}
        self.fail_when = fail_when
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0

    async def _accept(self, kind: str, batch: list[Any], ids: list[str]) -> int:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_when is not None and self.fail_when in ids:
                raise RuntimeError(f"rejected batch with {self.fail_when}")
            self.calls.append((kind, len(batch)))
            self.rows[kind].extend(batch)
            return len(batch)
        finally:
            self.in_flight -= 1

    async def upsert_items(self, items: list[ItemRecord]) -> int:
        return await self._accept("items", items, [i.item_id for i in items])

    async def upsert_users(self, users: list[UserProfile]) -> int:
        return await self._accept("users", users, [u.user_id for u in users])

    async def record_interactions(self, interactions: list[Interaction]) -> int:
        return await self._accept("interactions", interactions, [i.item_id for i in interactions])

    async def upsert_edges(self, edges: list[Edge]) -> int:
        return await self._accept("edges", edges, [e.src_item_id for e in edges])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datagen.Manifest]:
    out = tmp_path_factory.mktemp("load")
    manifest = datagen.generate(out, items=600, users=80, dim=8, clusters=6, now_ms=1_750_000_000_000)
    return out, manifest


async def test_loads_every_row_in_dependency_order(dataset: tuple[Path, datagen.Manifest]) -> None:
    directory, manifest = dataset
    writer = FakeWriter()
    summary = await load_dataset(directory, writer, batch_size=100, progress=False)
    assert summary.ok
    assert summary.rows == {
        "items": manifest.items,
        "users": manifest.users,
        "interactions": manifest.interactions,
        "edges": manifest.edges,
    }
    assert summary.total_rows == sum(summary.rows.values())
    assert summary.seconds > 0 and summary.rows_per_s > 0
    kinds_in_order = [kind for kind, _ in writer.calls]
    first_seen = sorted(set(kinds_in_order), key=kinds_in_order.index)
    assert first_seen == ["items", "users", "interactions", "edges"]
    assert kinds_in_order == sorted(kinds_in_order, key=first_seen.index)  # never interleaved
    assert len({i.item_id for i in writer.rows["items"]}) == manifest.items
    assert "loaded" in summary.describe()


async def test_batches_are_written_concurrently_but_bounded(dataset: tuple[Path, datagen.Manifest]) -> None:
    directory, _ = dataset
    writer = FakeWriter(delay_s=0.005)
    summary = await load_dataset(
        directory / "items.parquet", writer, batch_size=50, max_in_flight=3, progress=False
    )
    assert summary.ok
    assert writer.max_in_flight == 3


async def test_a_failing_batch_is_reported_and_the_load_goes_on(
    dataset: tuple[Path, datagen.Manifest],
) -> None:
    directory, manifest = dataset
    writer = FakeWriter(fail_when="i000250")
    summary = await load_dataset(directory, writer, batch_size=100, progress=False)
    assert not summary.ok
    (failure,) = [f for f in summary.failures if f.kind == "items"]
    assert (failure.first_row, failure.rows) == (201, 100)
    assert "rejected batch with i000250" in failure.error
    assert summary.rows["items"] == manifest.items - 100
    assert summary.failed_rows["items"] == 100
    assert summary.rows["users"] == manifest.users  # later kinds still loaded
    assert "FAILED items" in summary.describe()


async def test_a_malformed_file_is_reported_and_other_files_still_load(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(
        '{"item_id": "a", "embedding": [1, 0]}\n{"item_id": "b", "embedding": "oops"}\n'
    )
    (tmp_path / "edges.csv").write_text("src_item_id,dst_item_id,score\na,b,0.5\n")
    writer = FakeWriter()
    summary = await load_dataset(tmp_path, writer, batch_size=1, progress=False)
    assert not summary.ok
    (failure,) = summary.failures
    assert failure.kind == "items" and "row 2" in failure.error and "embedding" in failure.error
    assert summary.rows["items"] == 1
    assert summary.rows["edges"] == 1


def test_files_are_classified_by_name_prefix(tmp_path: Path) -> None:
    for name in ("edges.csv", "items-2.jsonl", "items-1.parquet", "users.parquet", "notes.txt"):
        (tmp_path / name).write_text("")
    found = [(kind, path.name) for kind, path in find_dataset_files(tmp_path)]
    assert found == [
        ("items", "items-1.parquet"),
        ("items", "items-2.jsonl"),
        ("users", "users.parquet"),
        ("edges", "edges.csv"),
    ]
    with pytest.raises(ValueError, match="cannot tell"):
        find_dataset_files([tmp_path / "notes.csv"])
