"""Edition detection agrees with what the server itself says."""

from __future__ import annotations

import psycopg

from schema.edition import detect_edition


def test_edition_matches_the_server_license(conn: psycopg.Connection) -> None:
    raw_license = conn.execute("SHOW timescaledb.license").fetchone()
    server_version = conn.execute("SHOW server_version").fetchone()
    assert raw_license is not None
    assert server_version is not None
    edition = detect_edition(conn)
    assert edition.license == raw_license[0]
    assert edition.postgres_version == server_version[0]
    tsl = raw_license[0] == "timescale"
    assert edition.continuous_aggregates is tsl
    assert edition.compression is tsl
    assert edition.job_policies is tsl
