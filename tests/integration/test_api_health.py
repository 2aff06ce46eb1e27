"""The API's probes against a real database."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient

from tests.apphelpers import make_app


def test_liveness_and_readiness_report_the_database(db_url: str, api_db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        license_row = conn.execute("SHOW timescaledb.license").fetchone()
        version_row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    assert license_row is not None
    assert version_row is not None
    with TestClient(make_app(db_url, api_db_url)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["timescaledb_edition"] == license_row[0]
    assert body["timescaledb_version"] == version_row[0]
    assert body["status"] == "ready"
