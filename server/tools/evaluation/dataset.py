"""The evaluation's input: a dataset directory read with the loader's readers, cleaned, and an account
of everything that was left out and why.

Interactions that cannot be used are skipped and counted by reason, never fatal: a malformed row (a
missing timestamp, say), a timestamp that is not positive (the server reads 0 as "now"), an item that
is not in the items file, a value the server's own checks would refuse. Rows out of time order are
sorted, and the users concerned counted. What makes the input unusable (no directory, no items or
interactions file, a file that cannot be parsed, nothing left to evaluate) raises UnusableInput, which
the CLI turns into a message and exit status 2.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from server import validation
from server.domain import Interaction
from server.errors import RecdError
from server.tools.loading.load import find_dataset_files
from server.tools.loading.readers import Kind, read_records
from server.validation import Limits

# The runtime refuses longer actions (server/runtime.py); such a row would fail its whole batch.
MAX_ACTION_CHARS = 64
_FIELD_PROBLEM = re.compile(r"field '([^']+)': (.*)$")


class UnusableInput(Exception):
    """The dataset cannot be evaluated; the message says why and what to fix."""


@dataclass
class InputReport:
    interactions_read: int = 0
    # reason -> interactions left out, with the first message of each reason as an example
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    # users whose rows were not in time order in the file (sorted by timestamp, not skipped)
    users_out_of_order: int = 0
    duplicate_item_ids: int = 0

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)

    @property
    def interactions_kept(self) -> int:
        return self.interactions_read - sum(self.skipped.values())


@dataclass
class Dataset:
    root: Path
    files: dict[Kind, list[Path]]
    item_ids: list[str]  # distinct, in file order
    dim: int
    histories: dict[str, list[Interaction]]  # user -> interactions, oldest first
    report: InputReport


def read_dataset(root: Path | str, limits: Limits | None = None) -> Dataset:
    root = Path(root)
    if not root.exists():
        raise UnusableInput(f"{root}: no such directory (a dataset directory, e.g. from `recd gen --out`)")
    if not root.is_dir():
        raise UnusableInput(f"{root}: not a directory; give the directory that holds the dataset files")
    try:
        found = find_dataset_files(root)
    except ValueError as exc:
        raise UnusableInput(str(exc)) from None
    files: dict[Kind, list[Path]] = {}
    for kind, path in found:
        files.setdefault(kind, []).append(path)
    for needed in ("items", "interactions"):
        if needed not in files:
            raise UnusableInput(f"{root}: no {needed} file ({needed}.parquet, .csv or .jsonl)")
    report = InputReport()
    item_ids, dim = _read_items(files["items"], report)
    limits = limits or Limits(dim, 10_000, 256)
    histories = _read_interactions(files["interactions"], set(item_ids), limits, report)
    if not histories:
        raise UnusableInput(
            f"{root}: no usable interactions; {describe_skips(report) or 'the file is empty'}"
        )
    return Dataset(root, files, item_ids, dim, histories, report)


def _read_items(paths: list[Path], report: InputReport) -> tuple[list[str], int]:
    seen: dict[str, None] = {}
    dim: int | None = None
    try:
        for path in paths:
            for batch in read_records(path, "items", 4096):
                for item in batch:
                    if dim is None:
                        dim = len(item.embedding)
                    elif len(item.embedding) != dim:
                        raise UnusableInput(
                            f"{path}: item {item.item_id!r} has {len(item.embedding)} dimensions, "
                            f"the items before it {dim}"
                        )
                    if item.item_id in seen:
                        report.duplicate_item_ids += 1
                    seen[item.item_id] = None
    except (ValueError, OSError) as exc:
        raise UnusableInput(f"cannot read the items: {exc}") from None
    if dim is None:
        raise UnusableInput(f"{', '.join(map(str, paths))}: no items")
    return list(seen), dim


def _read_interactions(
    paths: list[Path], catalogue: set[str], limits: Limits, report: InputReport
) -> dict[str, list[Interaction]]:
    histories: dict[str, list[Interaction]] = {}
    malformed: list[ValueError] = []
    try:
        for path in paths:
            for batch in read_records(path, "interactions", 4096, malformed):
                report.interactions_read += len(batch)
                for x in batch:
                    reason = _problem(x, catalogue, limits)
                    if reason is not None:
                        report.skip(*reason)
                        continue
                    histories.setdefault(x.user_id, []).append(x)
    except (ValueError, OSError) as exc:
        raise UnusableInput(f"cannot read the interactions: {exc}") from None
    for error in malformed:
        report.interactions_read += 1
        match = _FIELD_PROBLEM.search(str(error))
        if match is None:
            report.skip("malformed row", str(error))
        else:
            name, problem = match.groups()
            report.skip(f"{name} missing" if problem == "missing" else f"{name} malformed", str(error))
    for history in histories.values():
        times = [x.timestamp_ms for x in history]
        if any(later < earlier for earlier, later in itertools.pairwise(times)):
            report.users_out_of_order += 1
            history.sort(key=lambda x: x.timestamp_ms)  # stable: ties keep their file order
    return histories


def _problem(x: Interaction, catalogue: set[str], limits: Limits) -> tuple[str, str] | None:
    if x.timestamp_ms <= 0:
        return "timestamp_ms not positive", f"user {x.user_id!r}, item {x.item_id!r}: {x.timestamp_ms}"
    if x.timestamp_ms > time.time() * 1000 + validation.MAX_CLOCK_SKEW_MS:
        return "timestamp_ms in the future", f"user {x.user_id!r}, item {x.item_id!r}: {x.timestamp_ms}"
    if x.item_id not in catalogue:
        return "item not in the items file", f"user {x.user_id!r}, item {x.item_id!r}"
    try:
        validation.check_id(x.user_id, "user_id", limits)
        validation.check_id(x.item_id, "item_id", limits)
        validation.check_weight(x.weight, "weight")
    except RecdError as exc:
        return "refused by the server's checks", exc.message
    if len(x.action) > MAX_ACTION_CHARS:
        return "refused by the server's checks", f"action is longer than {MAX_ACTION_CHARS} characters"
    return None


def describe_skips(report: InputReport) -> str:
    return "; ".join(f"{n} skipped: {reason}" for reason, n in report.skipped.most_common())
