"""DATABASE_URL off loopback needs sslmode=verify-full (rpmstore/db_transport.py)."""

from __future__ import annotations

import pytest

from ingest.transport import InsecureTransportError
from rpmstore.db_transport import check_database_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://rpm:pw@127.0.0.1:5432/rpm",
        "postgresql://rpm:pw@localhost/rpm",
        "postgresql://rpm:pw@[::1]/rpm",
        "postgresql:///rpm?host=/var/run/postgresql",  # a Unix socket
        "dbname=rpm user=rpm",  # libpq's default socket
        "postgresql://rpm:pw@db.example/rpm?sslmode=verify-full&sslrootcert=/ca.crt",
    ],
)
def test_loopback_sockets_and_verified_tls_are_accepted(url: str) -> None:
    assert check_database_url(url, allow_unverified=False) == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://rpm:pw@db.example/rpm",  # libpq's prefer: may fall back to plain text
        "postgresql://rpm:pw@db.example/rpm?sslmode=require",  # encrypted, server unverified
        "postgresql://rpm:pw@db.example/rpm?sslmode=verify-ca",  # any host with a CA cert
        "host=127.0.0.1,10.0.0.7 dbname=rpm",  # a second host off loopback
    ],
)
def test_unverified_connections_off_loopback_are_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    with pytest.raises(InsecureTransportError, match="verify-full"):
        check_database_url(url, allow_unverified=False)
    assert check_database_url(url, allow_unverified=True) == url


def test_libpq_sslmode_from_the_environment_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    url = "postgresql://rpm:pw@db.example/rpm"
    assert check_database_url(url, allow_unverified=False) == url
