"""POST /v1/readings end to end: real FastAPI app, real TimescaleDB."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from schema.registry import assign_device, register_device, register_patient
from tests.apphelpers import make_app


@dataclass(frozen=True)
class Ward:
    client: TestClient
    conn: psycopg.Connection
    device_id: uuid.UUID
    patient_id: uuid.UUID
    token: str
    other_token: str

    def post(self, body: bytes | dict[str, Any], token: str | None = None) -> Any:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(
            "/v1/readings",
            content=content,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )


NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def ward(db_url: str, api_db_url: str, conn: psycopg.Connection) -> Iterator[Ward]:
    patient = register_patient(conn)
    device = register_device(
        conn, kind="pulse_oximeter", manufacturer="Acme", model="OX-1", serial_number="SN-HTTP"
    )
    other = register_device(
        conn, kind="scale", manufacturer="Acme", model="SC-1", serial_number="SN-OTHER"
    )
    assign_device(
        conn, device_id=device.device_id, patient_id=patient, valid_from=NOW - timedelta(days=30)
    )
    with TestClient(make_app(db_url, api_db_url)) as client:
        yield Ward(client, conn, device.device_id, patient, device.token, other.token)


def at(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def spo2(minutes_ago: int, value: float = 97.0) -> dict[str, Any]:
    return {"metric": "spo2", "value": value, "unit": "%", "time": at(minutes_ago)}


# One reading in the first readings array, two in the second: which array is "the" readings?
_TWO_ARRAYS = (
    b'{"readings": ['
    + json.dumps(spo2(1)).encode()
    + b'], "readings": ['
    + json.dumps(spo2(2)).encode()
    + b", "
    + json.dumps(spo2(3)).encode()
    + b"]}"
)
_TWO_VALUES = (
    json.dumps({"readings": [spo2(1, 91.0)]})
    .encode()
    .replace(b'"value": 91.0', b'"value": 91.0, "value": 97.0')
)


def stored_rows(ward: Ward) -> list[tuple[Any, ...]]:
    return ward.conn.execute(
        "SELECT measured_at, metric_id, value, patient_id FROM rpm.readings ORDER BY 1, 2"
    ).fetchall()


def test_valid_readings_are_stored_and_a_retry_creates_no_duplicates(ward: Ward) -> None:
    body = {
        "readings": [
            spo2(3),
            {"metric": "8867-4", "value": 72, "unit": "/min", "time": at(3)},
            {
                "metric": "blood_pressure",
                "systolic": 128,
                "diastolic": 82,
                "unit": "mm[Hg]",
                "time": at(2),
                "id": "bp-1",
            },
        ]
    }
    first = ward.post(body)
    assert first.status_code == 200, first.text
    assert first.json() | {"batch_id": 0} == {
        "batch_id": 0,
        "stored": 4,
        "duplicates": 0,
        "rejected": [],
    }
    retry = ward.post(body)
    assert retry.status_code == 200
    assert (retry.json()["stored"], retry.json()["duplicates"]) == (0, 4)
    rows = stored_rows(ward)
    assert len(rows) == 4
    assert {row[3] for row in rows} == {ward.patient_id}


def test_partly_bad_payload_stores_the_good_and_says_why_for_the_rest(ward: Ward) -> None:
    response = ward.post(
        {
            "readings": [
                spo2(5),
                spo2(4, value=150),
                {"metric": "glucose_cgm", "value": 6.1, "unit": "[degF]", "time": at(4)},
                {"metric": "not_a_metric", "value": 1, "unit": "%", "time": at(4)},
                {
                    "metric": "spo2",
                    "value": 97,
                    "unit": "%",
                    "time": (NOW + timedelta(hours=1)).isoformat(),
                },
            ]
        }
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] == 1
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
        (1, "out_of_range"),
        (2, "unconvertible_unit"),
        (3, "unknown_metric"),
        (4, "future_time"),
    ]
    quarantined = ward.conn.execute(
        "SELECT reading_index, reason, raw_payload, source FROM rpm.ingest_quarantine "
        "JOIN rpm.ingest_payloads USING (payload_sha256) "
        "ORDER BY reading_index"
    ).fetchall()
    assert [(q[0], q[1]) for q in quarantined] == [
        (r["index"], r["reason"]) for r in body["rejected"]
    ]
    assert all(json.loads(q[2])["readings"][1]["value"] == 150 for q in quarantined)
    assert {q[3] for q in quarantined} == {"http"}


def test_conflicting_value_for_a_stored_reading_is_rejected_and_kept(ward: Ward) -> None:
    assert ward.post({"readings": [spo2(10, 96)]}).json()["stored"] == 1
    response = ward.post({"readings": [spo2(10, 91)]})
    assert response.status_code == 200
    assert [r["reason"] for r in response.json()["rejected"]] == ["conflict"]
    assert [row[2] for row in stored_rows(ward)] == [96.0]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"readings": [', 400, "malformed_json"),
        (b"\xff\xfe not utf-8", 400, "malformed_json"),
        (b"[1, 2, 3]", 422, "invalid_payload"),
        (b'{"readings": []}', 422, "invalid_payload"),
        (b'{"readings": "spo2"}', 422, "invalid_payload"),
        (b'{"readings": [' + b'{"x": 1},' * 200_000 + b"{}]}", 413, "payload_too_large"),
        # Ambiguous JSON: once answered 200 with only the second array's readings stored.
        (_TWO_ARRAYS, 422, "duplicate_member"),
        (
            _TWO_ARRAYS.replace(b'"readings": [{"m', b'"r\\u0065adings": [{"m', 1),
            422,
            "duplicate_member",
        ),
        (_TWO_VALUES, 422, "duplicate_member"),
    ],
)
def test_unusable_payloads_get_a_clear_error_and_are_quarantined(
    ward: Ward, body: bytes, status: int, reason: str
) -> None:
    response = ward.post(body)
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert response.json()["detail"]
    quarantined = ward.conn.execute(
        "SELECT reason, raw_payload, reading_index FROM rpm.ingest_quarantine "
        "JOIN rpm.ingest_payloads USING (payload_sha256)"
    ).fetchall()
    assert len(quarantined) == 1
    stored_reason, raw, index = quarantined[0]
    assert (stored_reason, index) == (reason, None)
    # The raw bytes are kept; an oversize body only up to the limit (it is never buffered whole).
    assert body.startswith(raw)
    assert raw == body or reason == "payload_too_large"
    assert stored_rows(ward) == []


def test_payload_naming_another_device_is_forbidden(ward: Ward) -> None:
    response = ward.post({"device_id": str(uuid.uuid4()), "readings": [spo2(1)]})
    assert response.status_code == 403
    assert response.json()["reason"] == "device_mismatch"
    assert stored_rows(ward) == []


def test_missing_or_unknown_token_is_unauthorised(ward: Ward) -> None:
    no_token = ward.client.post("/v1/readings", content=b'{"readings": []}')
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    unknown = ward.post({"readings": [spo2(1)]}, token="not-a-token")
    assert unknown.status_code == 401
    assert unknown.json()["reason"] == "unknown_token"


def test_readings_from_an_unassigned_device_are_quarantined(ward: Ward) -> None:
    response = ward.post({"readings": [spo2(1)]}, token=ward.other_token)
    assert response.status_code == 200
    assert [r["reason"] for r in response.json()["rejected"]] == ["no_assignment"]
    assert stored_rows(ward) == []


def test_metrics_count_every_outcome(ward: Ward) -> None:
    ward.post({"readings": [spo2(2), spo2(1, value=150)]})
    ward.post({"readings": [spo2(2)]})
    text = ward.client.get("/metrics").text
    assert 'rpmstore_ingest_readings_total{outcome="stored",reason="",source="http"} 1.0' in text
    assert 'rpmstore_ingest_readings_total{outcome="duplicate",reason="",source="http"} 1.0' in text
    quarantined = 'outcome="quarantined",reason="out_of_range",source="http"'
    assert f"rpmstore_ingest_readings_total{{{quarantined}}} 1.0" in text
    assert "rpmstore_ingest_commit_seconds_count" in text


def test_readings_older_than_the_retention_horizon_are_refused(ward: Ward) -> None:
    # Raw readings are kept 90 days (rpm.retention_policies): an older reading would land in a
    # chunk the next retention run drops, so it is quarantined instead of acknowledged.
    device = register_device(
        ward.conn, kind="scale", manufacturer="Acme", model="SC-2", serial_number="SN-OLD"
    )
    assign_device(
        ward.conn,
        device_id=device.device_id,
        patient_id=ward.patient_id,
        valid_from=NOW - timedelta(days=400),
    )
    old = {"metric": "body_weight", "value": 80, "unit": "kg", "time": at(100 * 24 * 60)}
    recent = {"metric": "body_weight", "value": 81, "unit": "kg", "time": at(80 * 24 * 60)}
    response = ward.post({"readings": [old, recent]}, token=device.token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] == 1
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(0, "too_old")]
    reasons = ward.conn.execute(
        "SELECT reason FROM rpm.ingest_quarantine WHERE reading_index = 0"
    ).fetchall()
    assert reasons == [("too_old",)]
