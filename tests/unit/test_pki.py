"""The local CA (rpmstore.localstack.pki): what it issues, and that its keys stay private."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from rpmstore.localstack.pki import ensure_ca


def test_ca_is_created_once_with_an_owner_only_key(tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path / "ca", "test CA")
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    again = ensure_ca(tmp_path / "ca", "test CA")
    assert again.cert == ca.cert  # loaded, not replaced: clients keep trusting it
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca


def test_server_certificate_names_its_hosts_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path, "test CA")
    issued = ca.issue_server("broker", ["localhost", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    issued.write(tmp_path / "s.crt", tmp_path / "s.key")
    assert (tmp_path / "s.key").stat().st_mode & 0o777 == 0o600


def test_client_certificate_and_revocation_list(tmp_path: Path) -> None:
    ca = ensure_ca(tmp_path, "device CA")
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = ca.issue_client("device-1", not_before=past, not_after=past + dt.timedelta(days=1))
    cert = x509.load_pem_x509_certificate(expired.cert_pem)
    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    crl = x509.load_pem_x509_crl(ca.write_crl([expired.serial]).read_bytes())
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(expired.serial) is not None
