"""Care-team scoping, audit and authentication of the clinician API, against the real database.

Two care teams, each with a clinician and a patient with readings and an alert. Everything one
clinician may do is tried against the other team's patient: always 404, never data, and the
refusal is audited. The database enforces it too: the API's role reads nothing without an acting
user, and can reach neither the readings hypertable nor its chunks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.access import UnsafeApiRoleError
from api.app import create_app
from schema.registry import (
    PatientIdentity,
    assign_device,
    register_device,
    register_patient,
)
from tests.apphelpers import bearer, make_app

NOW = datetime.now(UTC).replace(microsecond=0)
SPO2, HEART_RATE = 4, 1

INSERT_TEAM = "INSERT INTO rpm.care_teams (name) VALUES (%s) RETURNING care_team_id"
INSERT_CLINICIAN = (
    "INSERT INTO rpm.clinicians (subject, display_name) VALUES (%s, %s) RETURNING clinician_id"
)
INSERT_MEMBER = "INSERT INTO rpm.care_team_members (care_team_id, clinician_id) VALUES (%s, %s)"
INSERT_TEAM_PATIENT = (
    "INSERT INTO rpm.care_team_patients (care_team_id, patient_id) VALUES (%s, %s)"
)
INSERT_BATCH = """
    INSERT INTO rpm.ingest_batches (source, ingestor, row_count) VALUES ('import', 'test', 3)
    RETURNING batch_id
"""
INSERT_READING = """
    INSERT INTO rpm.readings (measured_at, received_at, value, device_id, patient_id, metric_id,
                              batch_id)
    VALUES (%s, %s, %s, %s, %s, %s, (SELECT max(batch_id) FROM rpm.ingest_batches))
"""
INSERT_RULE = """
    INSERT INTO rpm.alert_rules (name, metric_id, kind, threshold, severity)
    VALUES ('SpO2 low', 4, 'below', 90, 'critical') RETURNING rule_id
"""
INSERT_ALERT = """
    INSERT INTO rpm.alerts (rule_id, patient_id, severity, rule_snapshot, first_breach_at,
                            last_breach_at, last_value)
    VALUES (%s, %s, 'critical', '{"threshold": 90}', %s, %s, 85) RETURNING alert_id
"""


@dataclass(frozen=True)
class Team:
    care_team_id: uuid.UUID
    clinician: str
    patient_id: uuid.UUID
    device_id: uuid.UUID
    alert_id: uuid.UUID

    def headers(self) -> dict[str, str]:
        return bearer(self.clinician, ["clinician"], [self.care_team_id])


@dataclass(frozen=True)
class Ward:
    client: TestClient
    a: Team
    b: Team
    owner: psycopg.Connection


def _team(conn: psycopg.Connection, name: str, rule_id: uuid.UUID) -> Team:
    team = conn.execute(INSERT_TEAM, (name,)).fetchone()[0]  # type: ignore[index]
    subject = f"{name}-clinician"
    clinician = conn.execute(INSERT_CLINICIAN, (subject, subject)).fetchone()[0]  # type: ignore[index]
    conn.execute(INSERT_MEMBER, (team, clinician))
    patient = register_patient(
        conn,
        identity=PatientIdentity(given_name=name.title(), family_name="Doe"),
        identifiers=[("urn:mrn", f"MRN-{name}")],
    )
    conn.execute(INSERT_TEAM_PATIENT, (team, patient))
    device = register_device(
        conn, kind="pulse_oximeter", manufacturer="Acme", model="Ox", serial_number=name
    )
    assign_device(
        conn, device_id=device.device_id, patient_id=patient, valid_from=NOW - timedelta(days=2)
    )
    conn.execute(INSERT_BATCH)
    # The newest measurement arrives first; an older one arrives later and must not win.
    conn.execute(
        INSERT_READING, (NOW - timedelta(minutes=1), NOW, 97.0, device.device_id, patient, SPO2)
    )
    conn.execute(
        INSERT_READING,
        (
            NOW - timedelta(minutes=30),
            NOW + timedelta(seconds=5),
            88.0,
            device.device_id,
            patient,
            SPO2,
        ),
    )
    conn.execute(
        INSERT_READING,
        (NOW - timedelta(minutes=2), NOW, 71.0, device.device_id, patient, HEART_RATE),
    )
    alert = conn.execute(
        INSERT_ALERT, (rule_id, patient, NOW - timedelta(minutes=30), NOW - timedelta(minutes=30))
    ).fetchone()[0]  # type: ignore[index]
    return Team(team, subject, patient, device.device_id, alert)


@pytest.fixture
def ward(db_url: str, api_db_url: str, conn: psycopg.Connection) -> Iterator[Ward]:
    rule = conn.execute(INSERT_RULE).fetchone()[0]  # type: ignore[index]
    a, b = _team(conn, "alpha", rule), _team(conn, "bravo", rule)
    with TestClient(make_app(db_url, api_db_url)) as client:
        yield Ward(client, a, b, conn)


def _audit(conn: psycopg.Connection, subject: str) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT action, patient_id, outcome, route FROM rpm.audit_log WHERE actor_subject = %s "
        "ORDER BY audit_id",
        (subject,),
    ).fetchall()


def test_panel_shows_only_my_patients_with_latest_by_measurement_time(ward: Ward) -> None:
    response = ward.client.get("/v1/patients", headers=ward.a.headers())
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["patient_id"] for item in items] == [str(ward.a.patient_id)]
    (patient,) = items
    assert patient["open_alerts"] == 1
    assert patient["worst_open_severity"] == "critical"
    spo2 = next(v for v in patient["latest_vitals"] if v["metric"] == "spo2")
    # 97 was measured last although 88 was received last.
    assert spo2["value"] == 97.0
    assert {v["metric"] for v in patient["latest_vitals"]} == {"spo2", "heart_rate"}
    assert ("list_patients", ward.a.patient_id, "success", "/v1/patients") in _audit(
        ward.owner, ward.a.clinician
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/patients/{patient}"),
        ("GET", "/v1/patients/{patient}/vitals/latest"),
    ],
)
def test_other_teams_patient_is_not_found_and_the_attempt_is_audited(
    ward: Ward, method: str, path: str
) -> None:
    response = ward.client.request(
        method, path.format(patient=ward.b.patient_id), headers=ward.a.headers()
    )
    assert response.status_code == 404
    assert str(ward.b.patient_id) not in response.text.replace(
        f"/{ward.b.patient_id}", ""
    )  # no data, only the not-found detail
    assert response.json() == {"detail": "patient not found"}
    outcomes = [row for row in _audit(ward.owner, ward.a.clinician) if row[1] == ward.b.patient_id]
    assert [row[2] for row in outcomes] == ["not_found"]
    # The owner of the patient still sees it.
    own = ward.client.request(
        method, path.format(patient=ward.b.patient_id), headers=ward.b.headers()
    )
    assert own.status_code == 200


def test_a_nonexistent_patient_looks_exactly_like_a_foreign_one(ward: Ward) -> None:
    foreign = ward.client.get(f"/v1/patients/{ward.b.patient_id}", headers=ward.a.headers())
    missing = ward.client.get(f"/v1/patients/{uuid.uuid4()}", headers=ward.a.headers())
    assert (foreign.status_code, foreign.json()) == (missing.status_code, missing.json())


def test_alert_inbox_is_scoped_and_filtered(ward: Ward) -> None:
    mine = ward.client.get("/v1/alerts", headers=ward.a.headers()).json()["items"]
    assert [alert["alert_id"] for alert in mine] == [str(ward.a.alert_id)]
    assert mine[0]["rule_snapshot"] == {"threshold": 90}
    foreign = ward.client.get(
        "/v1/alerts", params={"patient_id": str(ward.b.patient_id)}, headers=ward.a.headers()
    )
    assert foreign.status_code == 200 and foreign.json()["items"] == []
    resolved = ward.client.get(
        "/v1/alerts", params={"status": "resolved"}, headers=ward.a.headers()
    )
    assert resolved.json()["items"] == []


def test_detail_has_identifiers_and_devices_but_no_credentials(ward: Ward) -> None:
    response = ward.client.get(f"/v1/patients/{ward.a.patient_id}", headers=ward.a.headers())
    body = response.json()
    assert body["identifiers"] == [{"system": "urn:mrn", "value": "MRN-alpha", "type_code": "MR"}]
    assert [d["device_id"] for d in body["devices"]] == [str(ward.a.device_id)]
    stored = ward.owner.execute(
        "SELECT credential_sha256, broker_password_hash FROM rpm.devices WHERE device_id = %s",
        (ward.a.device_id,),
    ).fetchone()
    assert stored is not None
    for secret in stored:
        assert str(secret) not in response.text
    assert "credential" not in response.text and "password" not in response.text


def test_a_team_in_the_token_without_membership_grants_nothing(ward: Ward) -> None:
    # alpha's clinician claims bravo's team: membership in the database decides.
    headers = bearer(ward.a.clinician, ["clinician"], [ward.a.care_team_id, ward.b.care_team_id])
    items = ward.client.get("/v1/patients", headers=headers).json()["items"]
    assert [item["patient_id"] for item in items] == [str(ward.a.patient_id)]
    # and a membership without the claim grants nothing either
    headers = bearer(ward.a.clinician, ["clinician"], [])
    assert ward.client.get("/v1/patients", headers=headers).json()["items"] == []


def test_roles_and_tokens_are_checked(ward: Ward) -> None:
    assert ward.client.get("/v1/patients").status_code == 401
    ops = bearer("ops-1", ["ops"])
    assert ward.client.get("/v1/patients", headers=ops).status_code == 403
    assert ward.client.get("/v1/audit", headers=ward.a.headers()).status_code == 403
    expired = bearer(ward.a.clinician, ["clinician"], [ward.a.care_team_id], lifetime_s=-120)
    response = ward.client.get("/v1/patients", headers=expired)
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    forged = ward.a.headers()["Authorization"][:-4] + "AAAA"
    assert ward.client.get("/v1/patients", headers={"Authorization": forged}).status_code == 401


def test_page_sizes_are_capped_and_cursors_checked(ward: Ward) -> None:
    too_big = ward.client.get("/v1/patients", params={"limit": 1000}, headers=ward.a.headers())
    assert too_big.status_code == 422
    bad = ward.client.get(
        "/v1/alerts", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=ward.a.headers()
    )
    assert bad.status_code == 422


def test_admin_sees_everything_and_reads_the_audit_trail(ward: Ward) -> None:
    admin = bearer("admin-1", ["admin"])
    items = ward.client.get("/v1/patients", headers=admin).json()["items"]
    assert {item["patient_id"] for item in items} == {
        str(ward.a.patient_id),
        str(ward.b.patient_id),
    }
    ward.client.get(f"/v1/patients/{ward.b.patient_id}", headers=ward.a.headers())
    trail = ward.client.get(
        "/v1/audit", params={"subject": ward.a.clinician}, headers=admin
    ).json()["items"]
    assert trail[0]["outcome"] == "not_found"
    assert trail[0]["patient_id"] == str(ward.b.patient_id)
    assert trail[0]["route"] == "/v1/patients/{patient_id}"
    assert trail[0]["actor_role"] == "clinician"


def test_admin_registers_a_ward_that_its_clinician_then_sees(ward: Ward) -> None:
    admin = bearer("admin-1", ["admin"])
    team = ward.client.post("/v1/admin/care-teams", json={"name": "charlie"}, headers=admin)
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    member = ward.client.post(
        f"/v1/admin/care-teams/{team_id}/members",
        json={"subject": "carol", "display_name": "Dr Carol"},
        headers=admin,
    )
    assert member.status_code == 204, member.text
    patient = ward.client.post(
        "/v1/admin/patients",
        json={
            "given_name": "Charlie",
            "identifiers": [{"system": "urn:mrn", "value": "C-1"}],
            "care_team_ids": [team_id],
        },
        headers=admin,
    )
    assert patient.status_code == 201, patient.text
    patient_id = patient.json()["id"]
    device = ward.client.post(
        "/v1/admin/devices",
        json={
            "kind": "pulse_oximeter",
            "manufacturer": "Acme",
            "model": "Ox",
            "serial_number": "c1",
        },
        headers=admin,
    )
    assert device.status_code == 201, device.text
    device_id, token = device.json()["device_id"], device.json()["token"]
    assignment = ward.client.post(
        "/v1/admin/assignments",
        json={
            "device_id": device_id,
            "patient_id": patient_id,
            "valid_from": (NOW - timedelta(days=1)).isoformat(),
        },
        headers=admin,
    )
    assert assignment.status_code == 201, assignment.text
    overlap = ward.client.post(
        "/v1/admin/assignments",
        json={
            "device_id": device_id,
            "patient_id": str(ward.a.patient_id),
            "valid_from": NOW.isoformat(),
        },
        headers=admin,
    )
    assert overlap.status_code == 409
    # The device posts with the token it was given once; the clinician sees the reading.
    posted = ward.client.post(
        "/v1/readings",
        content=json.dumps(
            {
                "readings": [
                    {"metric": "spo2", "value": 95, "unit": "%", "time": int(time.time() * 1000)}
                ]
            }
        ),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert posted.status_code == 200, posted.text
    carol = bearer("carol", ["clinician"], [uuid.UUID(team_id)])
    latest = ward.client.get(f"/v1/patients/{patient_id}/vitals/latest", headers=carol).json()
    assert [(v["metric"], v["value"]) for v in latest["vitals"]] == [("spo2", 95.0)]
    # Registering is audited under the admin.
    actions = {row[0] for row in _audit(ward.owner, "admin-1")}
    assert {
        "create_care_team",
        "add_team_member",
        "register_patient",
        "register_device",
        "assign_device",
    } <= actions


def test_clinicians_cannot_use_admin_routes(ward: Ward) -> None:
    response = ward.client.post(
        "/v1/admin/patients", json={"given_name": "Eve"}, headers=ward.a.headers()
    )
    assert response.status_code == 403


def test_api_role_sees_nothing_without_an_acting_user_and_no_time_series(
    ward: Ward, api_db_url: str
) -> None:
    with psycopg.connect(api_db_url, autocommit=True) as api:
        assert api.execute("SELECT count(*) FROM rpm.patients").fetchone() == (0,)
        assert api.execute("SELECT count(*) FROM rpm.alerts").fetchone() == (0,)
        assert api.execute(
            "SELECT count(*) FROM rpm.latest_vitals(%s)", ([ward.a.patient_id],)
        ).fetchone() == (0,)
        for statement in (
            "SELECT count(*) FROM rpm.readings",
            "SELECT credential_sha256 FROM rpm.devices",
            "SELECT count(*) FROM rpm.ingest_quarantine",
            "UPDATE rpm.audit_log SET outcome = 'success'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                api.execute(statement)
        chunks = ward.owner.execute(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'readings'"
        ).fetchall()
        assert chunks, "the readings have chunks"
        for (chunk,) in chunks:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                api.execute(
                    psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.SQL(chunk))
                )


def test_api_refuses_a_role_that_bypasses_row_level_security(db_url: str) -> None:
    with pytest.raises(UnsafeApiRoleError), TestClient(make_app(db_url, db_url)):
        pass


def test_api_without_a_token_key_is_refused(db_url: str, api_db_url: str) -> None:
    # Only the ingest role, which never verifies a clinician token, may do without one.
    with pytest.raises(ValueError, match="needs auth"):
        create_app(database_url=db_url, api_database_url=api_db_url, auth=None)


def test_alert_lifecycle_is_recorded_and_audited(ward: Ward) -> None:
    url = f"/v1/alerts/{ward.a.alert_id}"
    acked = ward.client.post(
        f"{url}/ack", json={"note": "called the patient"}, headers=ward.a.headers()
    )
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == ward.a.clinician
    again = ward.client.post(f"{url}/ack", headers=ward.a.headers())
    assert again.status_code == 409
    resolved = ward.client.post(f"{url}/resolve", headers=ward.a.headers())
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    events = ward.owner.execute(
        "SELECT actor, from_status, to_status, note FROM rpm.alert_events WHERE alert_id = %s "
        "ORDER BY event_id",
        (ward.a.alert_id,),
    ).fetchall()
    assert events[-2:] == [
        (ward.a.clinician, "open", "acknowledged", "called the patient"),
        (ward.a.clinician, "acknowledged", "resolved", None),
    ]
    audited = [row[:3] for row in _audit(ward.owner, ward.a.clinician)]
    assert ("acknowledge_alert", ward.a.patient_id, "success") in audited
    assert ("resolve_alert", ward.a.patient_id, "success") in audited


def test_another_teams_alert_cannot_be_acknowledged(ward: Ward) -> None:
    for action in ("ack", "resolve"):
        response = ward.client.post(
            f"/v1/alerts/{ward.b.alert_id}/{action}", headers=ward.a.headers()
        )
        assert response.status_code == 404
        assert response.json() == {"detail": "alert not found"}
    status = ward.owner.execute(
        "SELECT status FROM rpm.alerts WHERE alert_id = %s", (ward.b.alert_id,)
    ).fetchone()
    assert status == ("open",)
    refused = [row for row in _audit(ward.owner, ward.a.clinician) if row[2] == "not_found"]
    assert [row[0] for row in refused] == ["acknowledge_alert", "resolve_alert"]


def test_timeline_has_gap_buckets_and_stays_in_scope(ward: Ward) -> None:
    start = (NOW - timedelta(minutes=40)).replace(second=0)
    params = {
        "metric": "spo2",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=40)).isoformat(),
        "resolution": "1m",
    }
    response = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/vitals", params=params, headers=ward.a.headers()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["metric"], body["unit"], body["resolution"]) == ("spo2", "%", "1m")
    points = body["points"]
    assert len(points) == 40  # one per minute, gaps included
    filled = [(p["bucket_start"], p["count"], p["last"]) for p in points if p["count"]]
    assert [(count, last) for _, count, last in filled] == [(1, 88.0), (1, 97.0)]
    gap = next(p for p in points if p["count"] == 0)
    assert (gap["min"], gap["max"], gap["avg"], gap["last"]) == (None, None, None, None)
    # auto: the coarsest rollup that still gives the requested points. Three whole hours give
    # three 1h buckets but at most two 1d buckets, whatever the time of day.
    hour = NOW.replace(minute=0, second=0)
    auto = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/vitals",
        params={
            **params,
            "start": (hour - timedelta(hours=3)).isoformat(),
            "end": hour.isoformat(),
            "resolution": "auto",
            "points": 3,
        },
        headers=ward.a.headers(),
    ).json()
    assert (auto["resolution"], len(auto["points"])) == ("1h", 3)
    foreign = ward.client.get(
        f"/v1/patients/{ward.b.patient_id}/vitals", params=params, headers=ward.a.headers()
    )
    assert foreign.status_code == 404
    too_long = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/vitals",
        params={**params, "resolution": "raw", "start": (NOW - timedelta(days=3)).isoformat()},
        headers=ward.a.headers(),
    )
    assert too_long.status_code == 422
    audited = [row[:3] for row in _audit(ward.owner, ward.a.clinician)]
    assert ("read_vitals", ward.a.patient_id, "success") in audited
    assert ("read_vitals", ward.b.patient_id, "not_found") in audited


def test_the_scoping_function_returns_nothing_for_another_team(ward: Ward, api_db_url: str) -> None:
    with psycopg.connect(api_db_url) as api, api.transaction():
        api.execute(
            "SELECT set_config('rpm.acting_subject', %s, true), "
            "set_config('rpm.acting_roles', 'clinician', true), "
            "set_config('rpm.acting_care_teams', %s, true)",
            (ward.a.clinician, str(ward.a.care_team_id)),
        )
        args = (NOW - timedelta(hours=1), NOW + timedelta(minutes=1), "raw")
        own = api.execute(
            "SELECT count(*) FROM rpm.patient_vitals_timeline(%s, 4::smallint, %s, %s, %s)",
            (ward.a.patient_id, *args),
        ).fetchone()
        other = api.execute(
            "SELECT count(*) FROM rpm.patient_vitals_timeline(%s, 4::smallint, %s, %s, %s)",
            (ward.b.patient_id, *args),
        ).fetchone()
        assert (own, other) == ((2,), (0,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            api.execute("SELECT count(*) FROM rpm.readings_1m")
