"""Loads a dataset (a directory or a list of files) into recd through a CatalogWriter.

Kinds load in dependency order, items, users, interactions, edges, one kind finishing before the next
starts (an edge or an interaction should not arrive before its item). Within a kind, up to
`max_in_flight` batches are being written at once while the next batch is read on a worker thread.

Failures do not stop the load: a batch the writer rejects is counted and reported with its error; a
malformed row stops reading that file (the rest of the file is not loaded), because its reader cannot
resume past it; the load then goes on with the next file. Either way the summary's `ok` is False.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from server.domain import Edge, Interaction, ItemRecord, UserProfile
from server.tools.loading.readers import KINDS, Kind, count_rows, file_format, read_records


class CatalogWriter(Protocol):
    """Where loaded rows go; each method returns how many rows were accepted."""

    async def upsert_items(self, items: list[ItemRecord]) -> int: ...

    async def upsert_users(self, users: list[UserProfile]) -> int: ...

    async def record_interactions(self, interactions: list[Interaction]) -> int: ...

    async def upsert_edges(self, edges: list[Edge]) -> int: ...


@dataclass(frozen=True, slots=True)
class LoadFailure:
    kind: Kind
    file: Path
    # 1-based rows of the file; for a file that stopped at a malformed row, the rows not loaded from it
    # are unknown and `rows` is 0.
    first_row: int
    rows: int
    error: str


@dataclass
class LoadSummary:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failures: list[LoadFailure] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_s(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        counts = ", ".join(f"{kind} {self.rows[kind]}" for kind in KINDS)
        lines = [
            f"loaded {self.total_rows} rows ({counts}) from {len(self.files)} files in {self.seconds:.1f} s "
            f"({self.rows_per_s:,.0f} rows/s)"
        ]
        for failure in self.failures:
            last_row = failure.first_row + failure.rows - 1
            rows = (
                f"rows {failure.first_row}..{last_row}" if failure.rows else f"from row {failure.first_row}"
            )
            lines.append(f"FAILED {failure.kind} {failure.file} {rows}: {failure.error}")
        return "\n".join(lines)


def find_dataset_files(source: Path | str | Sequence[Path | str]) -> list[tuple[Kind, Path]]:
    """(kind, file) in load order. A directory is searched for `<kind>*.<parquet|csv|jsonl>`; an explicit
    file's kind is the prefix of its name (items.parquet, users-2024.csv, ...)."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        directory = Path(source)
        candidates = sorted(p for p in directory.iterdir() if p.is_file() and _is_data_file(p))
        found = [(kind, p) for p in candidates if (kind := _kind_of(p)) is not None]
        if not found:
            raise ValueError(
                f"{directory}: no dataset files (expected {', '.join(KINDS)} as .parquet/.csv/.jsonl)"
            )
    else:
        paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
        found = []
        for path in paths:
            file_format(path)
            kind = _kind_of(path)
            if kind is None:
                raise ValueError(f"{path}: cannot tell what it holds; name it {', '.join(KINDS)} (prefix)")
            found.append((kind, path))
    return sorted(found, key=lambda kf: KINDS.index(kf[0]))


def _is_data_file(path: Path) -> bool:
    try:
        file_format(path)
    except ValueError:
        return False
    return True


def _kind_of(path: Path) -> Kind | None:
    name = path.name.lower()
    return next((kind for kind in KINDS if name.startswith(kind)), None)


async def load_dataset(
    source: Path | str | Sequence[Path | str],
    writer: CatalogWriter,
    batch_size: int = 1000,
    progress: bool = True,
    max_in_flight: int = 4,
) -> LoadSummary:
    """Load every dataset file found in `source` through `writer`; see the module docstring for order
    and failure handling."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    files = find_dataset_files(source)
    write: dict[Kind, Callable[[list[Any]], Awaitable[int]]] = {
        "items": writer.upsert_items,
        "users": writer.upsert_users,
        "interactions": writer.record_interactions,
        "edges": writer.upsert_edges,
    }
    summary = LoadSummary(files=[path for _, path in files])
    started = time.perf_counter()
    for kind in KINDS:
        kind_files = [path for k, path in files if k == kind]
        if not kind_files:
            continue
        totals = [count_rows(path) for path in kind_files]
        total = None if None in totals else sum(t or 0 for t in totals)
        with tqdm(
            total=total, desc=kind, unit="rows", unit_scale=True, file=sys.stderr, disable=not progress
        ) as bar:
            for path in kind_files:
                await _load_file(kind, path, write[kind], batch_size, max_in_flight, bar, summary)
    summary.seconds = time.perf_counter() - started
    return summary


async def _load_file(
    kind: Kind,
    path: Path,
    write: Callable[[list[Any]], Awaitable[int]],
    batch_size: int,
    max_in_flight: int,
    bar: tqdm,
    summary: LoadSummary,
) -> None:
    async def send(batch: list[Any], first_row: int) -> None:
        try:
            accepted = await write(batch)
        except Exception as exc:
            summary.failed_rows[kind] += len(batch)
            summary.failures.append(LoadFailure(kind, path, first_row, len(batch), _describe(exc)))
        else:
            summary.rows[kind] += accepted
        bar.update(len(batch))

    batches: Iterator[list[Any]] = read_records(path, kind, batch_size)
    in_flight: set[asyncio.Task[None]] = set()
    next_row = 1
    try:
        while True:
            try:
                # Parsing runs on a worker thread so that writes in flight keep making progress meanwhile.
                batch = await asyncio.to_thread(next, batches, None)
            except Exception as exc:
                summary.failures.append(LoadFailure(kind, path, next_row, 0, _describe(exc)))
                break
            if batch is None:
                break
            if len(in_flight) >= max_in_flight:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.add(asyncio.create_task(send(batch, next_row)))
            next_row += len(batch)
    finally:
        if in_flight:
            await asyncio.gather(*in_flight)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
