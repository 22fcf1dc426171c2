"""Fuzzing every public RPC of a real frontend on 127.0.0.1 (the toy catalogue), within a bounded time:
Hypothesis over raw bytes and over structured messages (derandomised: the same requests every run), and
the corpus replayed. 0 crashes, 0 INTERNAL/UNKNOWN (or UNAVAILABLE: nothing in an embedded server can be
unavailable) answers, no hang, and the server healthy after (health SERVING, a normal Recommend works).
The same run, longer, is `recd bench fuzz`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.gen.recd.v1 import catalog_pb2
from server.tests.conftest import DIM, ToyCatalogue, make_config
from server.tools.fuzz.run import HANG, MODES, UNEXPECTED, fuzz
from server.tools.fuzz.target import PUBLIC_SERVICES, FuzzTarget, Method, frontend, methods_of

CORPUS = Path(__file__).with_name("corpus")
# Requests per RPC and mode: about a second per RPC on a CI machine.
EXAMPLES = int(os.environ.get("RECD_FUZZ_EXAMPLES", "100"))
METHODS = methods_of(PUBLIC_SERVICES)


@pytest.fixture(scope="module")
def target(toy: ToyCatalogue) -> Iterator[FuzzTarget]:
    items = [
        catalog_pb2.Item(
            item_id=item_id,
            embedding=toy.vectors[i].tolist(),
            attributes=toy.attributes[i],
            popularity=float(toy.popularity[i]),
        )
        for i, item_id in enumerate(toy.item_ids)
    ]
    target = frontend(make_config(), items)
    try:
        assert target.healthy()
        yield target
    finally:
        target.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_fuzzed_requests_get_no_internal_or_unknown_answer(
    target: FuzzTarget, method: Method, mode: str
) -> None:
    run = fuzz(target, method, mode, dim=DIM, examples=EXAMPLES)
    assert run.requests >= 1
    assert run.bad == 0 and (run.hangs == 0 or method.streaming), run.codes
    assert run.healthy_after, f"the server is not healthy after fuzzing {method.path} ({mode})"


def corpus() -> list[tuple[str, Path]]:
    """(method path, file): each file of a method's directory, and every file of any/ for every method."""
    cases = []
    for directory in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        paths = (
            [m.path for m in METHODS]
            if directory.name == "any"
            else ["/" + directory.name.rsplit(".", 1)[0] + "/" + directory.name.rsplit(".", 1)[1]]
        )
        cases.extend((path, f) for f in sorted(directory.glob("*.bin")) for path in paths)
    return cases


CASES = corpus()


def test_every_corpus_directory_names_a_method() -> None:
    known = {m.path for m in METHODS}
    assert {path for path, _ in CASES} <= known
    assert len(CASES) > len(METHODS)


@pytest.mark.parametrize(("path", "file"), CASES, ids=[f"{p.rsplit('/', 1)[1]}:{f.stem}" for p, f in CASES])
def test_the_corpus_is_answered_without_internal_errors(target: FuzzTarget, path: str, file: Path) -> None:
    method = next(m for m in METHODS if m.path == path)
    code = target.call(method, file.read_bytes(), timeout_s=10.0)
    assert code not in UNEXPECTED, code
    assert code != HANG or method.streaming, code
    if file.parent.name != "any" and file.stem != "empty":
        # Every input kept for one method is bad input, refused as such.
        assert code == grpc.StatusCode.INVALID_ARGUMENT, code


def test_the_server_is_alive_after_the_fuzzing(target: FuzzTarget) -> None:
    assert target.healthy()
