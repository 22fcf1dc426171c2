"""Tokens, their stored hashes, callers by token or certificate name, and the roles each RPC needs."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import yaml

from server.config import AuthConfig, CallerConfig, ConfigError, load_config
from server.gen.recd.v1 import catalog_pb2, recommender_pb2, shard_pb2
from server.security import auth
from server.security.auth import (
    METHOD_ROLES,
    Authenticator,
    Caller,
    Rejection,
    TokenHash,
    authorize,
    bearer_token,
    certificate_names,
    hash_token,
    new_token,
    token_id,
)
from server.tests.security.callers import CHEAP, bearer, issue

# What each RPC needs, written out here independently of METHOD_ROLES: the README's role table.
EXPECTED_ROLES: dict[str, set[str]] = {
    "/recd.v1.Recommender/Recommend": {"recommend"},
    "/recd.v1.Recommender/SimilarItems": {"recommend"},
    "/recd.v1.Recommender/RecordInteractions": {"feedback"},
    "/recd.v1.Catalog/UpsertItems": {"catalog"},
    "/recd.v1.Catalog/DeleteItems": {"catalog"},
    "/recd.v1.Catalog/GetItems": {"catalog"},
    "/recd.v1.Catalog/UpsertUsers": {"catalog"},
    "/recd.v1.Catalog/DeleteUser": {"catalog"},
    "/recd.v1.Catalog/DeleteUsers": {"catalog"},
    "/recd.v1.Catalog/GetUser": {"catalog"},
    "/recd.v1.Catalog/UpsertEdges": {"catalog"},
    "/recd.v1.Catalog/WatchDeletes": {"catalog"},
    "/recd.v1.Catalog/Stats": {"admin"},
    "/recd.v1.Catalog/AdminReloadModel": {"admin"},
    "/recd.v1.Catalog/AdminExperimentOutcomes": {"admin"},
    "/recd.v1.Shard/Search": {"internal"},
    "/recd.v1.Shard/Upsert": {"internal"},
    "/recd.v1.Shard/Delete": {"internal"},
    "/recd.v1.Shard/Fetch": {"internal"},
    "/recd.v1.Shard/Scan": {"internal"},
    "/recd.v1.Shard/Changes": {"internal"},
    "/recd.v1.Shard/Stats": {"internal", "admin"},
    "/recd.v1.Shard/GetLayout": {"internal", "admin"},
    "/recd.v1.Shard/SetLayout": {"internal", "admin"},
}


def every_rpc() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module, name in ((recommender_pb2, "Recommender"), (catalog_pb2, "Catalog"), (shard_pb2, "Shard"))
        for service in [module.DESCRIPTOR.services_by_name[name]]
        for method in service.methods
    ]


def test_every_rpc_of_the_protos_has_its_roles() -> None:
    rpcs = every_rpc()
    assert set(rpcs) == set(EXPECTED_ROLES), "a new RPC needs its roles in METHOD_ROLES and in this table"
    assert {m: set(r) for m, r in METHOD_ROLES.items()} == EXPECTED_ROLES


@pytest.mark.parametrize("method", sorted(EXPECTED_ROLES))
@pytest.mark.parametrize("role", ["recommend", "feedback", "catalog", "admin", "internal"])
def test_authorize_grants_exactly_the_listed_roles(method: str, role: str) -> None:
    caller = Caller("svc", frozenset({role}))
    if role in EXPECTED_ROLES[method]:
        assert authorize(caller, method) == role
    else:
        with pytest.raises(Rejection) as info:
            authorize(caller, method)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.caller == "svc" and method in info.value.message


def test_an_rpc_missing_from_the_table_is_refused_to_everyone() -> None:
    with pytest.raises(Rejection) as info:
        authorize(Caller("root", frozenset(auth.ROLES)), "/recd.v1.Catalog/DropEverything")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


# --- tokens -----------------------------------------------------------------------------------------
def test_a_token_verifies_against_its_hash_and_nothing_else() -> None:
    token = new_token()
    stored = hash_token(token)  # the real cost parameters, once
    assert (stored.n, stored.r, stored.p) == (auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P)
    parsed = TokenHash.parse(str(stored), "x")
    assert parsed == stored and parsed.ident == token_id(token)
    assert parsed.matches(token)
    other = new_token()
    assert not parsed.matches(other)
    assert not parsed.matches(token[:-1] + ("A" if token[-1] != "A" else "B"))


def test_two_hashes_of_one_token_differ_by_their_salt() -> None:
    token = new_token()
    a, b = hash_token(token, **CHEAP), hash_token(token, **CHEAP)
    assert a.salt != b.salt and str(a) != str(b)
    assert a.matches(token) and b.matches(token)


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    token = new_token()
    stored = hash_token(token, **CHEAP)
    assert stored.matches(token) and not stored.matches(new_token())
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_a_stored_hash_never_shows_its_digest_or_salt() -> None:
    stored = hash_token(new_token(), **CHEAP)
    text = repr(stored)
    assert stored.ident in text
    assert auth._b64(stored.digest) not in text and auth._b64(stored.salt) not in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256$abc",
        "scrypt$16384$8$1$nothex!!nothex!!$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
        "scrypt$16384$8$1$0123456789abcdef$short$" + "A" * 43,
        "scrypt$x$8$1$0123456789abcdef$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
    ],
)
def test_a_malformed_hash_is_a_config_error_naming_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.callers\[0\]\.token_hashes\[0\]"):
        TokenHash.parse(text, "auth.callers[0].token_hashes[0]")


@pytest.mark.parametrize("token", ["", "abc", "0123456789abcdef", "0123456789abcdeg.x", "0123.secret"])
def test_malformed_tokens_have_no_id(token: str) -> None:
    assert token_id(token) is None


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), None),
        ((("x-other", "1"),), None),
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), ""),
        ((("authorization", b"Bearer abc"),), "abc"),
    ],
)
def test_bearer_token_parsing(metadata: tuple[tuple[str, str], ...], expected: str | None) -> None:
    assert bearer_token(metadata) == expected


# --- the authenticator ------------------------------------------------------------------------------
async def test_auth_off_makes_everyone_anonymous_with_every_role() -> None:
    caller = await Authenticator(AuthConfig()).authenticate((), {})
    assert caller.name == "anonymous" and caller.roles == frozenset(auth.ROLES)


async def test_tokens_identify_their_callers_and_anything_else_is_unauthenticated() -> None:
    token_a, a = issue("svc-a", ["recommend"])
    token_b, b = issue("svc-b", ["catalog", "feedback"])
    authenticator = Authenticator(AuthConfig(enabled=True, callers=[a, b]))
    assert (await authenticator.authenticate(bearer(token_a), {})).name == "svc-a"
    caller_b = await authenticator.authenticate(bearer(token_b), {})
    assert caller_b.name == "svc-b" and caller_b.roles == {"catalog", "feedback"}

    wrong_secret = token_a.split(".")[0] + "." + new_token().split(".")[1]
    for metadata in (
        (),
        bearer(""),
        bearer(new_token()),
        bearer(wrong_secret),
        (("authorization", "Basic x"),),
    ):
        with pytest.raises(Rejection) as info:
            await authenticator.authenticate(metadata, {})
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and info.value.caller == "unknown"
        assert token_a not in info.value.message and wrong_secret not in info.value.message


async def test_a_verified_token_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    token, caller = issue("svc", ["recommend"])
    authenticator = Authenticator(AuthConfig(enabled=True, callers=[caller]))
    checks: list[str] = []
    real = TokenHash.matches

    def counted(self: TokenHash, presented: str) -> bool:
        checks.append(self.ident)
        return real(self, presented)

    monkeypatch.setattr(TokenHash, "matches", counted)
    for _ in range(5):
        await authenticator.authenticate(bearer(token), {})
    assert len(checks) == 1


async def test_an_unknown_token_id_costs_no_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    _, caller = issue("svc", ["recommend"])
    authenticator = Authenticator(AuthConfig(enabled=True, callers=[caller]))
    monkeypatch.setattr(TokenHash, "matches", lambda self, t: pytest.fail("hashed a token of no known id"))
    with pytest.raises(Rejection):
        await authenticator.authenticate(bearer(new_token()), {})


async def test_certificate_names_identify_callers() -> None:
    ops = CallerConfig(name="ops", roles=["admin"], cert_names=["spiffe://corp/ops"])
    ranker = CallerConfig(name="ranker", roles=["recommend"], cert_names=["ranker.corp"])
    authenticator = Authenticator(AuthConfig(enabled=True, callers=[ops, ranker]))
    by_uri = {"transport_security_type": [b"ssl"], "x509_subject_alternative_name": [b"spiffe://corp/ops"]}
    assert (await authenticator.authenticate((), by_uri)).name == "ops"
    by_cn = {"x509_common_name": [b"ranker.corp"], "x509_subject_alternative_name": [b"other.corp"]}
    assert (await authenticator.authenticate((), by_cn)).name == "ranker"
    with pytest.raises(Rejection, match="names no configured caller"):
        await authenticator.authenticate((), {"x509_common_name": [b"stranger.corp"]})


async def test_a_token_decides_over_a_certificate() -> None:
    token, svc = issue("svc", ["recommend"])
    ops = CallerConfig(name="ops", roles=["admin"], cert_names=["ops.corp"])
    authenticator = Authenticator(AuthConfig(enabled=True, callers=[svc, ops]))
    cert = {"x509_common_name": [b"ops.corp"]}
    assert (await authenticator.authenticate(bearer(token), cert)).name == "svc"
    with pytest.raises(Rejection):
        await authenticator.authenticate(bearer(new_token()), cert)


def test_certificate_names_reads_sans_then_the_common_name() -> None:
    context = {
        "x509_common_name": [b"cn"],
        "x509_subject_alternative_name": [b"a.corp", b"b.corp"],
        "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"],
    }
    assert certificate_names(context) == ["a.corp", "b.corp", "cn"]
    assert certificate_names({}) == []


async def test_the_callers_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    token_old, old = issue("svc", ["recommend"])
    token_new, new = issue("svc", ["recommend"])
    path = tmp_path / "callers.yaml"
    path.write_text(
        yaml.safe_dump([{"name": "svc", "roles": ["recommend"], "token_hashes": old.token_hashes}])
    )
    now = [0.0]
    authenticator = Authenticator(AuthConfig(enabled=True, callers_file=str(path)), clock=lambda: now[0])
    assert (await authenticator.authenticate(bearer(token_old), {})).name == "svc"

    # Rotation: the new token added, the old one revoked.
    path.write_text(
        yaml.safe_dump([{"name": "svc", "roles": ["recommend"], "token_hashes": new.token_hashes}])
    )
    now[0] += Authenticator.FILE_CHECK_S + 1
    assert (await authenticator.authenticate(bearer(token_new), {})).name == "svc"
    with pytest.raises(Rejection):
        await authenticator.authenticate(bearer(token_old), {})

    # A broken file keeps the callers that loaded last.
    path.write_text("- name: svc\n  roles: [recommend]\n  token_hashes: [garbage]\n")
    now[0] += Authenticator.FILE_CHECK_S + 1
    assert (await authenticator.authenticate(bearer(token_new), {})).name == "svc"


def test_a_broken_callers_file_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text("- name: svc\n  roles: [superuser]\n  token_hashes: []\n")
    with pytest.raises(ConfigError, match="superuser"):
        Authenticator(AuthConfig(enabled=True, callers_file=str(path)))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"enabled": True}, "needs auth.callers or auth.callers_file"),
        ({"callers": [{"name": "a", "roles": ["root"], "cert_names": ["a"]}]}, "'root' is not a role"),
        ({"callers": [{"name": "a", "roles": ["admin"]}]}, "needs token_hashes or cert_names"),
        ({"callers": [{"name": "unknown", "roles": [], "cert_names": ["x"]}]}, "not 'unknown'"),
        (
            {"callers": [{"name": "a", "cert_names": ["x"]}, {"name": "a", "cert_names": ["y"]}]},
            "used by more than one caller",
        ),
        ({"quotas": {"recommend": {"rate_per_s": 0}}}, r"auth\.quotas\.recommend needs rate_per_s > 0"),
        ({"quotas": {"everything": {"rate_per_s": 1}}}, "'everything' is not a role"),
        ({"reflection": "sometimes"}, "auth.reflection: must be one of"),
    ],
)
def test_auth_config_problems_name_the_key(tmp_path: Path, section: dict[str, object], message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"auth": section}))
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_hash_token_command_issues_a_token_file_and_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from server.cli import main

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "svc.token"
    assert main(["security", "hash-token", "--out", str(out)]) == 0
    token = out.read_text().strip()
    assert out.stat().st_mode & 0o777 == 0o600
    printed = capsys.readouterr()
    assert token not in printed.out and token not in printed.err and token not in caplog.text
    line = next(x for x in printed.out.splitlines() if x.startswith("hash: "))
    assert TokenHash.parse(line.removeprefix("hash: "), "printed").matches(token)

    # An existing token hashed again (a second hash for the same token, e.g. another environment).
    assert main(["security", "hash-token", "--token-file", str(out)]) == 0
    again = capsys.readouterr().out
    assert token not in again
    assert TokenHash.parse(again.split("hash: ", 1)[1].strip(), "printed").matches(token)
