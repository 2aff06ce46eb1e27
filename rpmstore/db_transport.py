"""PostgreSQL connections off this machine must be encrypted and verified (sslmode=verify-full).

libpq's default, ``sslmode=prefer``, falls back to plain text and checks no certificate:
readings and the role's password could be read or the server impersonated by anyone on the
path. So a ``DATABASE_URL`` (or ``API_DATABASE_URL``) naming a host other than loopback or a
Unix socket is refused unless it asks for ``sslmode=verify-full`` (in the URL, or libpq's own
``PGSSLMODE``), or ``RPMSTORE_DATABASE_ALLOW_UNVERIFIED=true`` says the network is private by
other means (a compose network).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from psycopg.conninfo import conninfo_to_dict

from ingest.transport import InsecureTransportError, is_loopback


def _hosts(params: Mapping[str, object]) -> list[str]:
    hosts = str(params.get("host") or params.get("hostaddr") or "")
    return [host.strip() for host in hosts.split(",")] if hosts else []


def check_database_url(url: str, *, allow_unverified: bool, setting: str = "DATABASE_URL") -> str:
    """Return ``url`` when its transport is safe (see the module docstring); else refuse."""
    params = conninfo_to_dict(url)
    # No host: libpq's default Unix socket, which never leaves the machine; so is a path.
    remote = [h for h in _hosts(params) if h and not h.startswith("/") and not is_loopback(h)]
    if not remote or allow_unverified:
        return url
    sslmode = str(params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer")
    if sslmode != "verify-full":
        raise InsecureTransportError(
            f"{setting} points at {', '.join(remote)} with sslmode={sslmode}: off this machine "
            "the connection must be encrypted and the server verified, add "
            "?sslmode=verify-full&sslrootcert=/path/ca.crt (or set "
            "RPMSTORE_DATABASE_ALLOW_UNVERIFIED=true for a network private by other means; "
            "docs/operations/tls.md)"
        )
    return url
