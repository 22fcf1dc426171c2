"""Who is calling, and what may they do: bearer tokens (stored as salted scrypt hashes), client-certificate
names, the roles each RPC needs. The admission interceptor (server/security/admission.py) applies it.

Tokens look like `<id>.<secret>`: the id is public and names which stored hash to check, so a presented
token costs at most one scrypt, and a token with an unknown id none at all (a flood of made-up tokens
cannot buy CPU). A token that verified is remembered by a keyed digest, so the scrypt is paid once per
token and process, not per RPC. Plaintext tokens are never stored or logged; `TokenHash.__repr__` shows
only the id.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from server.config import (
    ROLES,
    AuthConfig,
    CallerConfig,
    ConfigError,
    QuotaConfig,
    build_section,
    load_list_file,
)
from server.files import Stamp, stamp

log = logging.getLogger(__name__)

# --- the roles each RPC needs (one of them suffices) ------------------------------------------------
RECOMMEND = frozenset({"recommend"})
FEEDBACK = frozenset({"feedback"})
CATALOG = frozenset({"catalog"})
ADMIN = frozenset({"admin"})
INTERNAL = frozenset({"internal"})

# Every RPC recd serves, by full method path. An RPC missing here is refused to everyone
# (PERMISSION_DENIED): a new RPC gets its role when it is added, and a test checks every RPC of the protos
# has an entry.
METHOD_ROLES: dict[str, frozenset[str]] = {
    "/recd.v1.Recommender/Recommend": RECOMMEND,
    "/recd.v1.Recommender/SimilarItems": RECOMMEND,
    "/recd.v1.Recommender/RecordInteractions": FEEDBACK,
    "/recd.v1.Catalog/UpsertItems": CATALOG,
    "/recd.v1.Catalog/DeleteItems": CATALOG,
    "/recd.v1.Catalog/GetItems": CATALOG,
    "/recd.v1.Catalog/UpsertUsers": CATALOG,
    "/recd.v1.Catalog/DeleteUser": CATALOG,
    "/recd.v1.Catalog/DeleteUsers": CATALOG,
    "/recd.v1.Catalog/GetUser": CATALOG,
    "/recd.v1.Catalog/UpsertEdges": CATALOG,
    "/recd.v1.Catalog/WatchDeletes": CATALOG,
    "/recd.v1.Catalog/Stats": ADMIN,
    "/recd.v1.Catalog/AdminReloadModel": ADMIN,
    "/recd.v1.Catalog/AdminExperimentOutcomes": ADMIN,
    "/recd.v1.Shard/Search": INTERNAL,
    "/recd.v1.Shard/Upsert": INTERNAL,
    "/recd.v1.Shard/Delete": INTERNAL,
    "/recd.v1.Shard/Fetch": INTERNAL,
    "/recd.v1.Shard/Scan": INTERNAL,
    "/recd.v1.Shard/Changes": INTERNAL,
    # A node's layout and stats are also what an operator reads and (rebalancing) sets.
    "/recd.v1.Shard/Stats": INTERNAL | ADMIN,
    "/recd.v1.Shard/GetLayout": INTERNAL | ADMIN,
    "/recd.v1.Shard/SetLayout": INTERNAL | ADMIN,
}

# Open to anyone, credentials or not: load balancers and the kubelet probe health without a token.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)

# The caller label of a request nobody was recognised for; caller names otherwise come from the config,
# so the rejection metrics' label values stay bounded whatever callers send.
UNKNOWN = "unknown"
ANONYMOUS = "anonymous"


# --- tokens -----------------------------------------------------------------------------------------
SCHEME = "scrypt"
# scrypt's cost: 16 MiB and some tens of milliseconds per check, paid once per token and process.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_ID_BYTES = 8
_SECRET_BYTES = 32


def new_token() -> str:
    """A fresh token: a public id (16 hex digits), a dot, 256 random bits (URL-safe base64)."""
    return f"{secrets.token_hex(_ID_BYTES)}.{secrets.token_urlsafe(_SECRET_BYTES)}"


def token_id(token: str) -> str | None:
    """The id part of a well-formed token, else None."""
    ident, dot, secret = token.partition(".")
    if not dot or len(ident) != 2 * _ID_BYTES or not secret:
        return None
    try:
        bytes.fromhex(ident)
    except ValueError:
        return None
    return ident


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    # hashlib.scrypt releases the GIL, so this can run on a thread beside the event loop.
    return hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=size)


@dataclass(frozen=True)
class TokenHash:
    """One stored token: `scrypt$<n>$<r>$<p>$<token id>$<salt>$<digest>` (salt and digest URL-safe base64)."""

    ident: str
    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str, where: str) -> TokenHash:
        parts = text.split("$")
        try:
            if len(parts) != 7 or parts[0] != SCHEME:
                raise ValueError
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            ident, salt, digest = parts[4], _unb64(parts[5]), _unb64(parts[6])
            if (
                token_id(f"{ident}.x") is None
                or len(salt) < 16
                or len(digest) < 32
                or n < 2
                or r < 1
                or p < 1
            ):
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"{where}: not a token hash (expected {SCHEME}$N$r$p$id$salt$digest, as printed by "
                "`recd security hash-token`)"
            ) from None
        return cls(ident, n, r, p, salt, digest)

    def matches(self, token: str) -> bool:
        """Blocking (scrypt): whether `token` is the one hashed here, compared in constant time."""
        derived = _scrypt(token, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(derived, self.digest)

    def __str__(self) -> str:
        return f"{SCHEME}${self.n}${self.r}${self.p}${self.ident}${_b64(self.salt)}${_b64(self.digest)}"


def hash_token(token: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> TokenHash:
    """The stored form of `token` (which must be of `new_token`'s form), with a fresh random salt."""
    ident = token_id(token)
    if ident is None:
        raise ValueError("a token is <16 hex digits>.<secret>, as `recd security hash-token` makes them")
    salt = os.urandom(16)
    return TokenHash(ident, n, r, p, salt, _scrypt(token, salt, n, r, p, 32))


# --- callers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    quotas: Mapping[str, QuotaConfig] = field(default_factory=dict)


EVERYONE = Caller(ANONYMOUS, frozenset(ROLES))


class Rejection(Exception):
    """Why a call is refused before its handler runs. `reason` is the rejection metric's label."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        caller: str = UNKNOWN,
        trailing: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.caller = caller
        self.trailing = trailing


def _unauthenticated(message: str) -> Rejection:
    return Rejection(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", message)


@dataclass
class _Callers:
    """The callers of the config and the callers file, indexed by token id and by certificate name."""

    by_token: dict[str, tuple[TokenHash, Caller]]
    by_cert: dict[str, Caller]
    names: frozenset[str]

    @classmethod
    def build(cls, configs: Iterable[tuple[str, CallerConfig]]) -> _Callers:
        by_token: dict[str, tuple[TokenHash, Caller]] = {}
        by_cert: dict[str, Caller] = {}
        names = set()
        for where, c in configs:
            caller = Caller(c.name, frozenset(c.roles), dict(c.quotas))
            if c.name in names:
                raise ConfigError(f"{where}.name {c.name!r} is used by more than one caller")
            names.add(c.name)
            for i, text in enumerate(c.token_hashes):
                stored = TokenHash.parse(text, f"{where}.token_hashes[{i}]")
                if stored.ident in by_token:
                    raise ConfigError(f"{where}.token_hashes[{i}]: token id {stored.ident} is listed twice")
                by_token[stored.ident] = (stored, caller)
            for name in c.cert_names:
                if name in by_cert and by_cert[name] is not caller:
                    raise ConfigError(
                        f"{where}.cert_names: {name!r} already names caller {by_cert[name].name!r}"
                    )
                by_cert[name] = caller
        return cls(by_token, by_cert, frozenset(names))


def _load_callers_file(path: str) -> list[tuple[str, CallerConfig]]:
    where = f"auth.callers_file ({path})"
    raw = load_list_file(path, where, "callers, as under auth.callers")
    loaded = [
        (f"{where}[{i}]", build_section(CallerConfig, entry, f"{where}[{i}]")) for i, entry in enumerate(raw)
    ]
    check = AuthConfig(callers=[c for _, c in loaded])
    problems = [p.replace("auth.callers", where) for p in check.problems()]
    if problems:
        raise ConfigError("; ".join(problems))
    return loaded


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The names of a verified client certificate: its subject alternative names (DNS, URI, ...), then
    its subject's common name. Empty without TLS or without a client certificate (gRPC puts x509 entries
    in the auth context only for a certificate its handshake verified)."""
    names: list[str] = []
    for key, values in auth_context.items():
        if key.startswith("x509_") and "subject_alternative_name" in key:
            names.extend(v.decode(errors="replace") for v in values)
    names.extend(v.decode(errors="replace") for v in auth_context.get("x509_common_name", ()))
    return names


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header; "" for a malformed header; None if absent."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class Authenticator:
    """Maps a call's credentials to a configured caller.

    A bearer token, when one is sent, decides (a wrong one is refused even over a verified certificate:
    whoever sent it meant it); otherwise the client certificate's names. `clock` (monotonic seconds)
    paces the checks of the callers file."""

    CACHE_SIZE = 4096
    # Scrypt checks at once (each holds 16 MiB and a core for tens of milliseconds).
    CONCURRENT_CHECKS = 2
    FILE_CHECK_S = 5.0

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = config.enabled
        self._config = config
        self._clock = clock
        # Cache keys are keyed digests of tokens, so not even this process's memory holds a token.
        self._cache_key = os.urandom(32)
        self._verified: OrderedDict[bytes, Caller | None] = OrderedDict()
        self._checks = asyncio.Semaphore(self.CONCURRENT_CHECKS)
        self._file_stamp: Stamp | None = None
        self._file_checked = clock()
        self._callers = self._load()

    @property
    def caller_names(self) -> frozenset[str]:
        return self._callers.names

    def _stamp(self) -> Stamp | None:
        path = self._config.callers_file
        return None if path is None else stamp(path)

    def _load(self) -> _Callers:
        configs = [(f"auth.callers[{i}]", c) for i, c in enumerate(self._config.callers)]
        self._file_stamp = self._stamp()
        if self._config.callers_file is not None:
            configs += _load_callers_file(self._config.callers_file)
        return _Callers.build(configs)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._config.callers_file is None or now - self._file_checked < self.FILE_CHECK_S:
            return
        self._file_checked = now
        stamp = self._stamp()
        if stamp == self._file_stamp or stamp is None:
            return
        try:
            callers = self._load()
        except ConfigError as exc:
            # A half-written or broken file must not lock everyone out: keep the callers we have.
            log.error("auth: keeping the previous callers, the changed callers file does not load: %s", exc)
            self._file_stamp = stamp
            return
        self._callers = callers
        self._verified.clear()  # a revoked token must stop working now
        log.info("auth: callers reloaded from %s (%d callers)", self._config.callers_file, len(callers.names))

    async def authenticate(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, auth_context: Mapping[str, Iterable[bytes]]
    ) -> Caller:
        """The caller, or Rejection(UNAUTHENTICATED) for a missing, malformed or unknown credential."""
        if not self.enabled:
            return EVERYONE
        self._maybe_reload()
        token = bearer_token(metadata)
        if token is not None:
            return await self._by_token(token)
        names = certificate_names(auth_context)
        for name in names:
            caller = self._callers.by_cert.get(name)
            if caller is not None:
                return caller
        if names:
            raise _unauthenticated(
                "the client certificate names no configured caller (auth.callers[].cert_names); "
                "or send a token: authorization: Bearer <token>"
            )
        raise _unauthenticated("credentials required: a client certificate or authorization: Bearer <token>")

    async def _by_token(self, token: str) -> Caller:
        ident = token_id(token)
        entry = self._callers.by_token.get(ident) if ident is not None else None
        if entry is None:
            # Says nothing about which part was wrong, and never echoes the token.
            raise _unauthenticated("invalid bearer token")
        stored, caller = entry
        key = hmac.digest(self._cache_key, token.encode(), "sha256")
        if key in self._verified:
            self._verified.move_to_end(key)
            known = self._verified[key]
        else:
            async with self._checks:
                known = caller if await asyncio.to_thread(stored.matches, token) else None
            self._verified[key] = known
            if len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)
        if known is None:
            raise _unauthenticated("invalid bearer token")
        return known


def authorize(caller: Caller, method: str) -> str:
    """The role under which `caller` may call `method`, or Rejection(PERMISSION_DENIED)."""
    needed = METHOD_ROLES.get(method)
    if needed is None:
        raise Rejection(
            grpc.StatusCode.PERMISSION_DENIED,
            "permission_denied",
            f"{method} is granted to no role (server/security/auth.py METHOD_ROLES)",
            caller.name,
        )
    for role in ROLES:  # a fixed order, so a caller with two fitting roles always uses the same quota
        if role in needed and role in caller.roles:
            return role
    raise Rejection(
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_denied",
        f"caller {caller.name!r} lacks the role {' or '.join(sorted(needed))} that {method} needs",
        caller.name,
    )
