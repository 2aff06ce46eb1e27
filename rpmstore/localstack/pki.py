"""A local certificate authority for the embedded stack and the test suite.

Transport security is only tested for real when the servers present real certificates, so
``rpmstore db up`` and the suite's fixtures make their own CA (one per stack instance, kept
with the stack's state) and issue from it: server certificates for Mosquitto and PostgreSQL
on loopback, and X.509 device certificates for mutual TLS. A deployment uses its own PKI; this
one is trusted by nothing but the processes pointed at its ``ca.crt``.

Keys are ECDSA P-256: as strong as RSA-3072 for TLS, and generated in a millisecond, which
matters to a suite that issues certificates per test.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL = "ca.crl"
# The CA outlives many `db up`s; leaf certificates are re-issued on every one, so they can be
# short-lived (under the 398 days browsers and most TLS stacks accept for server certificates).
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=397)
# Issued a little in the past: a client whose clock runs slightly behind still accepts them.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the pair; the key is created owner-only (0600) before its first byte."""
        write_private(key_path, self.key_pem)
        cert_path.write_bytes(self.cert_pem)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a file no one but its owner can read, replacing it atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # servers start unattended; the file mode protects it
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class LocalCa:
    """A CA whose key and certificate live in ``directory`` (the key owner-only)."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL

    def issue_server(self, common_name: str, hosts: Sequence[str]) -> IssuedCertificate:
        """A TLS server certificate valid for ``hosts`` (DNS names or IP addresses)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(
            common_name,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alternative_names=names,
            not_before=_now() - _BACKDATE,
            not_after=_now() + LEAF_LIFETIME,
        )

    def issue_client(
        self,
        common_name: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A TLS client certificate; the broker takes ``common_name`` as the username."""
        return self._issue(
            common_name,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            alternative_names=[],
            not_before=not_before or _now() - _BACKDATE,
            not_after=not_after or _now() + LEAF_LIFETIME,
        )

    def _issue(
        self,
        common_name: str,
        *,
        usage: x509.ObjectIdentifier,
        alternative_names: list[x509.GeneralName],
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> IssuedCertificate:
        key = _new_key()
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # A server certificate cannot be presented as a device identity, nor the reverse.
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if alternative_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative_names), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCertificate(
            cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial
        )

    def write_crl(self, revoked_serials: Iterable[int] = ()) -> Path:
        """Write the CA's revocation list (``ca.crl``); a broker given it refuses those serials.

        An empty list is still written: Mosquitto's ``crlfile`` must name a valid CRL.
        """
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + LEAF_LIFETIME)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - _BACKDATE)
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        self.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path


def ensure_ca(directory: Path, common_name: str) -> LocalCa:
    """Load the CA kept in ``directory``, creating it (and the folder, 0700) the first time."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{key_path} is not the EC key this module writes")
        return LocalCa(directory, cert, key)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a certificate without its key would be loaded as a CA that cannot issue.
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return LocalCa(directory, cert, key)
