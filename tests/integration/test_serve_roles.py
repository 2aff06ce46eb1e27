"""``rpmstore serve --role``: device ingest and the clinician API as separate services."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.apphelpers import TEST_AUTH, bearer, make_app

CLINICIAN_PATHS = ("/v1/patients", "/v1/alerts", "/v1/audit", "/v1/admin", "/v1/fhir")


def _paths(client: TestClient) -> set[str]:
    return set(client.get("/openapi.json").json()["paths"])


def test_the_ingest_role_serves_devices_only_and_needs_no_api_role(db_url: str) -> None:
    app = create_app(database_url=db_url, api_database_url=None, auth=TEST_AUTH, role="ingest")
    with TestClient(app) as client:
        paths = _paths(client)
        assert "/v1/readings" in paths
        assert not [p for p in paths if p.startswith(CLINICIAN_PATHS)]
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/metrics").status_code == 200
        # A clinician's request is not routed at all, whatever the token.
        headers = bearer("dr-ingest", ["clinician"], [uuid.uuid4()])
        assert client.get("/v1/patients", headers=headers).status_code == 404
        assert client.get(f"/v1/patients/{uuid.uuid4()}/vitals/latest").status_code == 404
        # Device ingest still answers: a wrong device token is refused, not "no such route".
        refused = client.post(
            "/v1/readings",
            json={"device_id": str(uuid.uuid4()), "readings": []},
            headers={"Authorization": "Bearer not-a-device-token"},
        )
        assert refused.status_code in (401, 403, 422)


def test_the_api_role_serves_clinicians_but_no_device_ingest(db_url: str, api_db_url: str) -> None:
    with TestClient(make_app(db_url, api_db_url, role="api")) as client:
        paths = _paths(client)
        assert "/v1/readings" not in paths
        assert {"/v1/patients", "/v1/alerts", "/v1/audit", "/v1/fhir"} <= paths
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/metrics").status_code == 200
        posted = client.post("/v1/readings", json={"device_id": str(uuid.uuid4())})
        assert posted.status_code in (404, 405)
        panel = client.get("/v1/patients", headers=bearer("dr-api", ["clinician"], []))
        assert panel.status_code == 200 and panel.json()["items"] == []


def test_the_default_role_serves_both_halves(db_url: str, api_db_url: str) -> None:
    with TestClient(make_app(db_url, api_db_url)) as client:
        paths = _paths(client)
    assert "/v1/readings" in paths and "/v1/patients" in paths


def test_roles_are_checked_before_anything_connects(db_url: str) -> None:
    with pytest.raises(ValueError, match="api_database_url"):
        create_app(database_url=db_url, api_database_url=None, auth=TEST_AUTH, role="api")
    with pytest.raises(ValueError, match="unknown role"):
        create_app(database_url=db_url, api_database_url=None, auth=TEST_AUTH, role="both")  # type: ignore[arg-type]  # the check under test
