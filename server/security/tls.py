"""TLS for every gRPC listener of recd and for every connection recd makes, from the config's `tls`
sections (server/config.py: TlsConfig for a listener, ClientTlsConfig for a client).

Listeners: `bind` is the one place a port is opened (server/lifecycle.py calls it). With TLS on, the
server's credentials are dynamic: gRPC asks `CertificateFiles.fetch` before every new connection's
handshake, which answers from a stat of the files and re-reads them only when one changed, so a rotated
certificate (or client CA bundle) is served to new connections without a restart while open connections
keep the one they agreed on. A half-written rotation (a new certificate beside the old key) is refused
and the previous certificate kept, so a rotation that goes wrong never takes the listener down.
Plaintext is for the embedded demo and tests on one machine: it says so at start, and on an address
other than loopback (or a unix socket) it is refused unless `allow_plaintext` is set.

Clients: `aio_channel` / `sync_channel` make a TLS or a plaintext channel from a ClientTlsConfig, and
`client_ssl_context` the ssl.SSLContext that Redis, the CQL driver and the Bolt driver take. gRPC reads a
client's certificate when the channel is made, so the owners of long-lived channels (a frontend's
shard-node clients, the edge's origin channels) watch the files with `ClientFilesWatch` and remake their
channels when they change; the drivers' contexts are made once (README, Security: TLS).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import grpc

from server import metrics
from server.config import ClientTlsConfig, ConfigError, TlsConfig

log = logging.getLogger(__name__)

ChannelOptions = Sequence[tuple[str, Any]]


def is_local_address(address: str) -> bool:
    """Whether a listen address is reachable from this machine only: a unix socket or a loopback host."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name ("my-pod") or an empty host ("[::]:50051", ":50051"): every interface, or not known.
        return False


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc.strerror}") from None


def _stamp(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """What identifies files' contents cheaply: a rotation replaces them (a new inode, as a rename or a
    Kubernetes Secret volume's symlink swap does) or rewrites them (mtime, size)."""
    stamps = []
    for path in paths:
        st = os.stat(path)
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


# --- listeners --------------------------------------------------------------------------------------


class CertificateFiles:
    """A listener's certificate, key and client CA bundle as they are on disk, re-read when they change.

    `where` is the config key of the TlsConfig (for messages: "server.tls"). Raises ConfigError at
    construction when the files are missing or do not fit together: a listener does not start without
    a certificate. Later, a change that does not load is logged and the previous certificate kept.
    """

    def __init__(self, tls: TlsConfig, where: str) -> None:
        self._tls = tls
        self._where = where
        self._paths = [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p]
        # gRPC calls fetch() from its own threads, possibly from several at once.
        self._lock = threading.Lock()
        try:
            self._stamp = self._stamp_now()
        except OSError:
            self._load()  # raises a ConfigError that names the key of the missing file
            raise
        self.current = self._load()
        self.reloads = 0

    def _stamp_now(self) -> tuple[tuple[int, int, int], ...]:
        return _stamp(self._paths)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        tls, where = self._tls, self._where
        cert = _read(tls.cert_file, f"{where}.cert_file")
        key = _read(tls.key_file, f"{where}.key_file")
        client_ca = _read(tls.client_ca_file, f"{where}.client_ca_file") if tls.client_ca_file else None
        # gRPC would accept a mismatched pair here and then fail every handshake; OpenSSL checks it now.
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            check.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{where}: {tls.cert_file!r} and {tls.key_file!r} are not a PEM certificate and its "
                f"key ({exc})"
            ) from None
        if tls.client_ca_file:
            try:
                check.load_verify_locations(cafile=tls.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"{where}.client_ca_file: {tls.client_ca_file!r} is not a PEM CA bundle ({exc})"
                ) from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: None keeps the certificate in use. Never raises (an exception here
        would fail the handshake of the connection that asked)."""
        with self._lock:
            try:
                stamp = self._stamp_now()
            except OSError as exc:
                # Mid-rotation a file can be briefly missing; the next connection looks again.
                log.warning(
                    "%s: cannot stat the certificate files (%s); keeping the current ones", self._where, exc
                )
                return None
            if stamp == self._stamp:
                return None
            try:
                loaded = self._load()
                # Written while being read: load again on the next connection, once the writes settle.
                settled = self._stamp_now() == stamp
            except (ConfigError, OSError) as exc:
                log.warning(
                    "%s: the changed certificate files do not load (%s); keeping the current ones",
                    self._where,
                    exc,
                )
                # Not retried on every connection: the next change of the files is.
                self._stamp = stamp
                metrics.TLS_CERTIFICATE_RELOADS.labels(self._where, "refused").inc()
                return None
            if not settled:
                return None
            self._stamp = stamp
            self.current = loaded
            self.reloads += 1
            metrics.TLS_CERTIFICATE_RELOADS.labels(self._where, "reloaded").inc()
            log.info("%s: certificate reloaded from %s", self._where, self._tls.cert_file)
            return loaded


def server_credentials(tls: TlsConfig, where: str) -> grpc.ServerCredentials:
    files = CertificateFiles(tls, where)
    return grpc.dynamic_ssl_server_credentials(
        files.current, files.fetch, require_client_authentication=tls.require_client_cert
    )


def check_listener(address: str, tls: TlsConfig | None, where: str) -> None:
    """What `bind` refuses, without binding: a process calls it before it builds anything costly (its
    shards, its backends), so that a listener it would refuse fails the start at once."""
    tls = tls if tls is not None else TlsConfig()
    problems = tls.problems(where)
    if problems:
        raise ConfigError("; ".join(problems))
    if tls.enabled:
        CertificateFiles(tls, where)
    elif not is_local_address(address) and not tls.allow_plaintext:
        raise ConfigError(
            f"refusing plaintext gRPC on {address}, which other machines can reach: set {where}.enabled "
            f"with {where}.cert_file and {where}.key_file (and {where}.client_ca_file with "
            f"{where}.require_client_cert for mutual TLS), or {where}.allow_plaintext: true where "
            "something else encrypts the network (a service mesh)"
        )


def bind(server: grpc.aio.Server, address: str, tls: TlsConfig | None, where: str) -> int:
    """Opens `address` on `server` as `tls` says (None: plaintext); returns the port (0: not bound).

    Raises ConfigError for plaintext on an address reachable from other machines without
    `allow_plaintext`, or for certificate files that cannot be loaded (see `check_listener`)."""
    check_listener(address, tls, where)
    tls = tls if tls is not None else TlsConfig()
    if tls.enabled:
        port = server.add_secure_port(address, server_credentials(tls, where))
        log.info(
            "TLS on %s (%s)",
            address,
            "client certificates required" if tls.require_client_cert else "no client certificates asked",
        )
        return port
    if address.startswith("unix:"):
        # Guarded by the file system (a group's state node: a socket in its 0700 directory); no warning
        # for each process of a group.
        return server.add_insecure_port(address)
    if not is_local_address(address):
        log.warning(
            "PLAINTEXT gRPC on %s (%s.allow_plaintext): traffic is neither encrypted nor authenticated "
            "by recd",
            address,
            where,
        )
    else:
        log.warning(
            "PLAINTEXT gRPC on %s (no %s): for the embedded demo and tests on this machine only",
            address,
            where,
        )
    return server.add_insecure_port(address)


# --- clients ----------------------------------------------------------------------------------------


def channel_credentials(tls: ClientTlsConfig, where: str) -> grpc.ChannelCredentials:
    problems = tls.problems(where)
    if problems:
        raise ConfigError("; ".join(problems))
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, f"{where}.ca_file") if tls.ca_file else None,
        private_key=_read(tls.key_file, f"{where}.key_file") if tls.key_file else None,
        certificate_chain=_read(tls.cert_file, f"{where}.cert_file") if tls.cert_file else None,
    )


class ClientFilesWatch:
    """Says when a client's CA bundle, certificate or key changed on disk, and the new files load.

    gRPC reads a client's credentials once, when its channel is made, and recd's channels live long (a
    frontend's shard-node clients, the edge's origin channels): their owners ask `changed()` now and then
    and remake their channels when it says so, so a renewed client certificate is used without a
    restart. A change that does not load (a certificate renamed into place before its key) is logged
    and skipped: the channels keep the credentials they have until the files change again."""

    def __init__(self, tls: ClientTlsConfig | None, where: str) -> None:
        self._tls = tls
        self._where = where
        self._paths = (
            [p for p in (tls.ca_file, tls.cert_file, tls.key_file) if p] if tls and tls.enabled else []
        )
        try:
            self._stamp = _stamp(self._paths)
        except OSError:
            self._stamp = ()  # not there yet: the first look that finds them counts as a change

    def changed(self) -> bool:
        """Never raises (its callers are background loops that must keep running)."""
        if not self._paths or self._tls is None:
            return False
        try:
            stamp = _stamp(self._paths)
        except OSError as exc:
            log.warning(
                "%s: cannot stat the certificate files (%s); keeping the current ones", self._where, exc
            )
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            client_ssl_context(self._tls, self._where)  # loads them: the key must be the certificate's
        except ConfigError as exc:
            log.warning(
                "%s: the changed certificate files do not load (%s); keeping the current ones",
                self._where,
                exc,
            )
            return False
        log.info("%s: certificate files changed; new connections use them", self._where)
        return True


def _options(tls: ClientTlsConfig | None, options: ChannelOptions) -> list[tuple[str, Any]]:
    merged = list(options)
    if tls is not None and tls.enabled and tls.server_name:
        merged.append(("grpc.ssl_target_name_override", tls.server_name))
    return merged


def aio_channel(
    target: str, tls: ClientTlsConfig | None, options: ChannelOptions = (), where: str = "client_tls"
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS when `tls` is enabled, else plaintext."""
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, channel_credentials(tls, where), options=_options(tls, options))


def sync_channel(
    target: str, tls: ClientTlsConfig | None, options: ChannelOptions = (), where: str = "client_tls"
) -> grpc.Channel:
    """The blocking counterpart of `aio_channel` (start-up probes made before an event loop runs)."""
    if tls is None or not tls.enabled:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, channel_credentials(tls, where), options=_options(tls, options))


def client_ssl_context(tls: ClientTlsConfig, where: str) -> ssl.SSLContext | None:
    """The ssl.SSLContext for Redis, the CQL driver or the Bolt driver (None: TLS off).

    Verifies the server's certificate and its name always; `server_name` is the name checked where the
    hosts are dialled by IP address (the caller passes it to its driver as the server hostname)."""
    problems = tls.problems(where)
    if problems:
        raise ConfigError("; ".join(problems))
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.ca_file:
            context.load_verify_locations(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}: cannot load {tls.ca_file or tls.cert_file!r} ({exc})") from None
    return context


# --- the backends' drivers --------------------------------------------------------------------------


def redis_url_and_options(url: str, tls: ClientTlsConfig, where: str) -> tuple[str, dict[str, Any]]:
    """The Redis url and redis-py connection arguments for `tls` (off: the url as it is).

    redis-py takes files, not an ssl.SSLContext, and checks the url's host against the certificate:
    a `server_name` cannot be honoured, so it is refused rather than silently ignored."""
    problems = tls.problems(where)
    if problems:
        raise ConfigError("; ".join(problems))
    if not tls.enabled:
        return url, {}
    if tls.server_name:
        raise ConfigError(
            f"{where}.server_name is not supported for Redis: put the name its certificate carries in the url"
        )
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{where}.{key}: {path!r} is not a file")
    if url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    options: dict[str, Any] = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if tls.ca_file:
        options["ssl_ca_certs"] = tls.ca_file
    if tls.cert_file:
        options["ssl_certfile"] = tls.cert_file
        options["ssl_keyfile"] = tls.key_file
    return url, options


def cql_options(tls: ClientTlsConfig, where: str) -> dict[str, Any]:
    """cassandra-driver Cluster arguments for `tls` ({} when off)."""
    context = client_ssl_context(tls, where)
    if context is None:
        return {}
    options: dict[str, Any] = {"ssl_context": context}
    if tls.server_name:
        # Without it the driver checks each node's certificate against the address it dialled.
        options["ssl_options"] = {"server_hostname": tls.server_name}
    return options


def bolt_options(tls: ClientTlsConfig, where: str) -> dict[str, Any]:
    """Neo4j driver arguments for `tls` ({} when off); the uri keeps a plain scheme (bolt://, neo4j://),
    as the driver refuses an ssl_context beside bolt+s:// or neo4j+s://."""
    if tls.enabled and tls.server_name:
        raise ConfigError(
            f"{where}.server_name is not supported for Neo4j: put the name its certificate carries in the uri"
        )
    context = client_ssl_context(tls, where)
    return {} if context is None else {"ssl_context": context}
