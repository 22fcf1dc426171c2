"""Throwaway certificates for tests and benchmarks, made fresh each time (no private key is ever
committed). Needs the `cryptography` package (a dev dependency): never used by a serving process.

`make_pki(directory)` writes PEM files for: a CA; a server certificate for 127.0.0.1 and localhost signed
by it; a client certificate signed by it; a second, unrelated CA ("wrong") with a client certificate of
its own; an expired server certificate signed by the real CA; and a rotation pair (a third CA with a
server certificate) for tests that replace a listener's files.

Also a command, for trying TLS by hand: `python -m server.tools.certs DIR`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA bundle servers and clients trust
    server: KeyPair  # 127.0.0.1 / localhost, serverAuth and clientAuth (a node calls itself with it)
    client: KeyPair  # CN recd-client, clientAuth
    wrong_ca: Path  # an unrelated CA
    wrong_client: KeyPair  # a client certificate from the unrelated CA
    expired_server: KeyPair  # signed by `ca`, valid until yesterday
    rotated_ca: Path  # a third CA ...
    rotated_server: KeyPair  # ... and a server certificate from it, to rotate to


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class _Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> _Authority:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    def issue(
        self,
        common_name: str,
        *,
        server: bool,
        client: bool,
        expired: bool = False,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
            if expired
            else (
                now - dt.timedelta(hours=1),
                now + dt.timedelta(days=7),
            )
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        names: list[x509.GeneralName] = [x509.DNSName(common_name)]
        if server:
            names += [x509.DNSName(n) for n in SERVER_NAMES]
            names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_IPS]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def write_ca(self, directory: Path) -> Path:
        path = directory / f"{self.name}.pem"
        _write_cert(self.cert, path)
        return path

    def write_issued(self, directory: Path, stem: str, common_name: str, **kind: bool) -> KeyPair:
        key, cert = self.issue(common_name, **kind)
        pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}.key")
        _write_cert(cert, pair.cert)
        _write_key(key, pair.key)
        return pair


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _Authority.create("recd-test-ca")
    wrong = _Authority.create("recd-wrong-ca")
    rotated = _Authority.create("recd-rotated-ca")
    return Pki(
        ca=ca.write_ca(directory),
        server=ca.write_issued(directory, "server", "recd-server", server=True, client=True),
        client=ca.write_issued(directory, "client", "recd-client", server=False, client=True),
        wrong_ca=wrong.write_ca(directory),
        wrong_client=wrong.write_issued(directory, "wrong-client", "recd-client", server=False, client=True),
        expired_server=ca.write_issued(
            directory, "expired-server", "recd-server", server=True, client=True, expired=True
        ),
        rotated_ca=rotated.write_ca(directory),
        rotated_server=rotated.write_issued(
            directory, "rotated-server", "recd-server", server=True, client=True
        ),
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m server.tools.certs DIR")
    for field, value in vars(make_pki(Path(sys.argv[1]))).items():
        print(f"{field}: {value}")
