"""The single-statement reads (latest vitals, timeline checks) and the batched audit keep the
answers and the audit trail of one statement per step: 404 before 422, one record per read,
records in the order made, nothing audited for a refused input."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.routes.patients import Timeline
from schema.registry import register_patient
from tests.apphelpers import bearer, make_app
from tests.integration.test_clinician_access import INSERT_RULE, INSERT_TEAM_PATIENT, NOW, Ward
from tests.integration.test_clinician_access import _team as make_team

DAY = {"start": (NOW - timedelta(hours=2)).isoformat(), "end": NOW.isoformat()}


@pytest.fixture
def ward(db_url: str, api_db_url: str, conn: psycopg.Connection) -> Iterator[Ward]:
    rule = conn.execute(INSERT_RULE).fetchone()[0]  # type: ignore[index]
    a, b = make_team(conn, "alpha", rule), make_team(conn, "bravo", rule)
    with TestClient(make_app(db_url, api_db_url)) as client:
        yield Ward(client, a, b, conn)


def _audit(conn: psycopg.Connection, subject: str) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT action, patient_id, outcome, details FROM rpm.audit_log "
        "WHERE actor_subject = %s ORDER BY audit_id",
        (subject,),
    ).fetchall()


def test_latest_vitals_of_a_patient_without_readings_is_empty_and_audited(ward: Ward) -> None:
    quiet = register_patient(ward.owner)
    ward.owner.execute(INSERT_TEAM_PATIENT, (ward.a.care_team_id, quiet))
    response = ward.client.get(f"/v1/patients/{quiet}/vitals/latest", headers=ward.a.headers())
    assert response.status_code == 200, response.text
    assert response.json() == {"patient_id": str(quiet), "vitals": []}
    assert _audit(ward.owner, ward.a.clinician) == [("read_latest_vitals", quiet, "success", {})]


def test_latest_vitals_reads_each_metric_once_and_audits_each_read(ward: Ward) -> None:
    url = f"/v1/patients/{ward.a.patient_id}/vitals/latest"
    for _ in range(3):
        body = ward.client.get(url, headers=ward.a.headers()).json()
        assert {v["metric"]: v["value"] for v in body["vitals"]} == {
            "heart_rate": 71.0,
            "spo2": 97.0,
        }
    assert [row[:3] for row in _audit(ward.owner, ward.a.clinician)] == [
        ("read_latest_vitals", ward.a.patient_id, "success")
    ] * 3


@pytest.mark.parametrize("metric", ["spo2", "no-such-metric"])
def test_timeline_of_another_teams_patient_is_not_found_whatever_the_metric(
    ward: Ward, metric: str
) -> None:
    response = ward.client.get(
        f"/v1/patients/{ward.b.patient_id}/vitals",
        params={"metric": metric, **DAY, "resolution": "1m"},
        headers=ward.a.headers(),
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "patient not found"}
    assert _audit(ward.owner, ward.a.clinician) == [
        ("read_vitals", ward.b.patient_id, "not_found", {})
    ]


def test_timeline_with_an_unknown_metric_is_refused_and_reads_nothing(ward: Ward) -> None:
    response = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/vitals",
        params={"metric": "no-such-metric", **DAY},
        headers=ward.a.headers(),
    )
    assert response.status_code == 422
    assert "unknown metric" in response.text
    assert _audit(ward.owner, ward.a.clinician) == []


def test_timeline_by_loinc_code_is_audited_with_the_catalogue_code(ward: Ward) -> None:
    response = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/vitals",
        params={"metric": "2708-6", **DAY, "resolution": "raw"},  # LOINC of SpO2
        headers=ward.a.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metric"] == "spo2"
    assert [p["last"] for p in body["points"]] == [88.0, 97.0]
    assert _audit(ward.owner, ward.a.clinician) == [
        ("read_vitals", ward.a.patient_id, "success", {"metric": "spo2", "resolution": "raw"})
    ]


def test_one_request_audits_every_patient_it_read_in_order(ward: Ward) -> None:
    admin = bearer("audit-admin", ["admin"])
    extra = [register_patient(ward.owner) for _ in range(3)]
    for patient in extra:
        ward.owner.execute(INSERT_TEAM_PATIENT, (ward.a.care_team_id, patient))
    page = ward.client.get("/v1/patients", params={"limit": 100}, headers=ward.a.headers())
    listed = [uuid.UUID(item["patient_id"]) for item in page.json()["items"]]
    assert set(listed) == {ward.a.patient_id, *extra}
    assert _audit(ward.owner, ward.a.clinician) == [
        ("list_patients", patient, "success", {}) for patient in listed
    ]
    # An admin's panel lists every patient, each audited once.
    everyone = ward.client.get("/v1/patients", params={"limit": 100}, headers=admin)
    assert len(everyone.json()["items"]) == 2 + len(extra)
    assert len(_audit(ward.owner, "audit-admin")) == 2 + len(extra)


@pytest.mark.parametrize("resolution", ["raw", "1m"])
def test_timeline_json_is_exactly_the_documented_models(ward: Ward, resolution: str) -> None:
    response = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/vitals",
        params={"metric": "spo2", **DAY, "resolution": resolution},
        headers=ward.a.headers(),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    timeline = Timeline.model_validate_json(response.content)
    assert response.content == timeline.model_dump_json().encode()
    filled = [p for p in timeline.points if p.count]
    assert [(p.count, p.last) for p in filled] == [(1, 88.0), (1, 97.0)]
    if resolution == "1m":  # every minute of the two hours, gaps included
        starts = [p.bucket_start for p in timeline.points]
        assert starts[0] <= timeline.start < starts[0] + timedelta(minutes=1)
        assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts))
        assert starts[-1] < timeline.end <= starts[-1] + timedelta(minutes=1)
