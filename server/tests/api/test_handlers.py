"""server/api/handlers.py and prechecks.py: requests parsed by the handler, with their size prechecks."""

from __future__ import annotations

import pytest

from server.api import prechecks
from server.api.handlers import method_handlers, parse
from server.api.server import CATALOG, RECOMMENDER
from server.errors import ErrorKind, RecdError
from server.gen.recd.v1 import common_pb2, recommender_pb2
from server.validation import Limits

LIMITS = Limits(16, 10)


def test_parse_names_the_message_and_what_is_wrong() -> None:
    request = recommender_pb2.RecommendRequest(user_id="u", k=3)
    assert parse(recommender_pb2.RecommendRequest, request.SerializeToString()) == request
    for raw, reason in (
        (b"\xff\xff", "Wire format was corrupt"),
        (b"\x0a\x02\xc3\x28", "String field had bad UTF-8"),
    ):
        with pytest.raises(RecdError) as err:
            parse(recommender_pb2.RecommendRequest, raw)
        assert err.value.kind == ErrorKind.INVALID_ARGUMENT
        assert f"the request is not a valid recd.v1.RecommendRequest: {reason}" in err.value.message


class _Anything:
    """A servicer with every method."""

    def __getattr__(self, name: str) -> object:
        return lambda request, context: None


def test_every_method_gets_a_handler_and_prechecks_name_real_methods() -> None:
    for service, checks in (
        (RECOMMENDER, prechecks.recommender(LIMITS)),
        (CATALOG, prechecks.catalog(LIMITS)),
    ):
        handlers = method_handlers(_Anything(), service, checks)
        assert set(handlers) == {m.name for m in service.methods}
        # Parsed by the handler: gRPC is given no deserializer that could fail outside it.
        assert all(h.request_deserializer is None for h in handlers.values())
    with pytest.raises(ValueError, match="does not have"):
        method_handlers(_Anything(), RECOMMENDER, {"Recomend": lambda r: None})


def test_recommend_precheck_refuses_on_counts_alone() -> None:
    check = prechecks.recommender(LIMITS)["Recommend"]
    check(recommender_pb2.RecommendRequest(user_id="u", filter={"a": common_pb2.AllowedValues(values=["x"])}))
    too_many = {f"a{n}": common_pb2.AllowedValues(values=["x"]) for n in range(33)}
    with pytest.raises(RecdError, match="filter has 33 attributes"):
        check(recommender_pb2.RecommendRequest(user_id="u", filter=too_many))
    with pytest.raises(RecdError, match="interactions has 11 entries; the limit is 10 per call"):
        prechecks.recommender(LIMITS)["RecordInteractions"](
            recommender_pb2.RecordInteractionsRequest(interactions=[recommender_pb2.Interaction()] * 11)
        )
