"""FHIR R4 export and import against the real database, ingest pipeline and scoping.

Two care teams, each with a clinician, a patient (MRN) and a device. Bundles are imported as an
admin through ``POST /v1/fhir`` and read back by the clinician through the Observation search;
every resource the server answers is validated with the ``fhir.resources`` R4B models (the
package's R4-compatible release: Observation, Bundle and OperationOutcome are the same in R4).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from schema.registry import PatientIdentity, assign_device, register_device, register_patient
from tests.apphelpers import bearer, make_app

NOW = datetime.now(UTC).replace(microsecond=0)
MRN = "urn:oid:1.2.36.146.595.217.0.1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ADMIN = bearer("admin-1", ["admin"])

INSERT_TEAM = "INSERT INTO rpm.care_teams (name) VALUES (%s) RETURNING care_team_id"
INSERT_CLINICIAN = (
    "INSERT INTO rpm.clinicians (subject, display_name) VALUES (%s, %s) RETURNING clinician_id"
)
INSERT_MEMBER = "INSERT INTO rpm.care_team_members (care_team_id, clinician_id) VALUES (%s, %s)"
INSERT_TEAM_PATIENT = (
    "INSERT INTO rpm.care_team_patients (care_team_id, patient_id) VALUES (%s, %s)"
)
INSERT_IDENTIFIER = (
    "INSERT INTO rpm.patient_identifiers (patient_id, system, value) VALUES (%s, %s, %s)"
)
INSERT_BATCH = """
    INSERT INTO rpm.ingest_batches (source, ingestor, row_count) VALUES ('import', 'test', 1)
"""
INSERT_READING = """
    INSERT INTO rpm.readings (measured_at, received_at, value, device_id, patient_id, metric_id,
                              utc_offset_minutes, client_reading_id, batch_id)
    VALUES (%s, now(), %s, %s, %s, %s, %s, %s, (SELECT max(batch_id) FROM rpm.ingest_batches))
"""
HEART_RATE, SPO2, SYSTOLIC, DIASTOLIC = 1, 4, 5, 6


@dataclass(frozen=True)
class Team:
    care_team_id: uuid.UUID
    clinician: str
    patient_id: uuid.UUID
    mrn: str
    device_id: uuid.UUID

    def headers(self) -> dict[str, str]:
        return bearer(self.clinician, ["clinician"], [self.care_team_id])


@dataclass(frozen=True)
class Ward:
    client: TestClient
    a: Team
    b: Team
    owner: psycopg.Connection

    def readings(self) -> int:
        return int(self.owner.execute("SELECT count(*) FROM rpm.readings").fetchone()[0])  # type: ignore[index]

    def quarantine(self) -> list[tuple[str, str, bytes]]:
        return [
            (row[0], row[1], bytes(row[2]))
            for row in self.owner.execute(
                "SELECT reason, detail, raw_payload FROM rpm.ingest_quarantine "
                "JOIN rpm.ingest_payloads USING (payload_sha256) "
                "ORDER BY quarantine_id"
            ).fetchall()
        ]

    def post(self, bundle: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
        return self.client.post(
            "/v1/fhir",
            content=json.dumps(bundle),
            headers={**headers, "Content-Type": "application/fhir+json"},
        )


def _team(conn: psycopg.Connection, name: str) -> Team:
    team = conn.execute(INSERT_TEAM, (name,)).fetchone()[0]  # type: ignore[index]
    subject = f"{name}-clinician"
    clinician = conn.execute(INSERT_CLINICIAN, (subject, subject)).fetchone()[0]  # type: ignore[index]
    conn.execute(INSERT_MEMBER, (team, clinician))
    mrn = f"MRN-{name}"
    patient = register_patient(
        conn, identity=PatientIdentity(given_name=name.title()), identifiers=[(MRN, mrn)]
    )
    conn.execute(INSERT_TEAM_PATIENT, (team, patient))
    device = register_device(
        conn, kind="bp_cuff", manufacturer="Acme", model="Cuff", serial_number=name
    )
    assign_device(
        conn, device_id=device.device_id, patient_id=patient, valid_from=NOW - timedelta(days=2)
    )
    return Team(team, subject, patient, mrn, device.device_id)


@pytest.fixture
def ward(db_url: str, api_db_url: str, conn: psycopg.Connection) -> Iterator[Ward]:
    a, b = _team(conn, "alpha"), _team(conn, "bravo")
    with TestClient(make_app(db_url, api_db_url)) as client:
        yield Ward(client, a, b, conn)


def _time(minutes_ago: int, offset: str = "+01:00") -> str:
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    delta = timedelta(hours=hours, minutes=minutes) * (1 if offset[0] == "+" else -1)
    local = NOW - timedelta(minutes=minutes_ago) + delta
    return local.replace(tzinfo=None).isoformat() + offset


def _observation(
    team: Team,
    ident: str,
    loinc: str,
    value: float,
    unit: str,
    when: str,
    *,
    mrn: str | None = None,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:acme:readings", "value": ident}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"identifier": {"system": MRN, "value": mrn or team.mrn}},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "device": {"reference": f"Device/{team.device_id}"},
    }


def _bp(team: Team, ident: str, systolic: float, diastolic: float, when: str) -> dict[str, Any]:
    observation = _observation(team, ident, "85354-9", 0, "mm[Hg]", when)
    del observation["valueQuantity"]
    observation["component"] = [
        {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": v, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }
        for code, v in (("8480-6", systolic), ("8462-4", diastolic))
    ]
    return observation


def _bundle(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": "Observation"}} for r in resources
        ],
    }


def _statuses(answer: dict[str, Any]) -> list[str]:
    return [entry["response"]["status"] for entry in answer["entry"]]


def _search(ward: Ward, team: Team, **params: Any) -> list[dict[str, Any]]:
    """Every Observation of the search, following `next` links; each page validated."""
    response = ward.client.get(
        "/v1/fhir/Observation",
        params={"patient": f"Patient/{team.patient_id}", **params},
        headers=team.headers(),
    )
    found: list[dict[str, Any]] = []
    while True:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        page = response.json()
        Bundle.model_validate(page)
        assert page["type"] == "searchset"
        found += [entry["resource"] for entry in page["entry"]]
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            return found
        response = ward.client.get(following[0], headers=team.headers())


def _essentials(observation: dict[str, Any]) -> dict[str, Any]:
    """What must survive a round trip: code, values in UCUM, time with offset, references."""

    def quantity(q: dict[str, Any]) -> tuple[float, str, str]:
        return (q["value"], q["system"], q["code"])

    return {
        "identifier": observation["identifier"][0]["value"],
        "code": observation["code"]["coding"][0]["code"],
        "effective": datetime.fromisoformat(observation["effectiveDateTime"]),
        "offset": datetime.fromisoformat(observation["effectiveDateTime"]).utcoffset(),
        "device": observation["device"]["reference"],
        "value": quantity(observation["valueQuantity"]) if "valueQuantity" in observation else None,
        "components": sorted(
            (c["code"]["coding"][0]["code"], *quantity(c["valueQuantity"]))
            for c in observation.get("component", [])
        ),
    }


def test_round_trip_import_then_export_gives_equivalent_observations(ward: Ward) -> None:
    a = ward.a
    sent = [
        _observation(a, "ox-1", "59408-5", 97.0, "%", _time(30)),
        _observation(a, "hr-1", "8867-4", 71.0, "/min", _time(30, "-05:00")),
        _bp(a, "bp-1", 128.0, 82.0, _time(20)),
        _observation(a, "t-1", "8310-5", 37.2, "Cel", _time(10, "+00:00")),
    ]
    response = ward.post(_bundle("batch", *sent))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    answer = response.json()
    Bundle.model_validate(answer)
    assert answer["type"] == "batch-response"
    assert _statuses(answer) == ["201 Created"] * 4
    assert ward.readings() == 5  # the panel is two readings

    exported = _search(ward, a)
    for observation in exported:
        assert observation["subject"] == {"reference": f"Patient/{a.patient_id}"}
        assert observation["category"][0]["coding"][0]["code"] == "vital-signs"
    by_id = {_essentials(o)["identifier"]: _essentials(o) for o in exported}
    expected = {_essentials(o)["identifier"]: _essentials(o) for o in sent}
    # 59408-5 is the pulse-oximetry alias of SpO2: exported with the catalogue's own code.
    expected["ox-1"]["code"] = "2708-6"
    assert by_id == expected
    panel = next(o for o in exported if o["code"]["coding"][0]["code"] == "85354-9")
    assert "valueQuantity" not in panel
    assert panel["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]


def test_reimport_stores_nothing_new_and_a_changed_value_is_a_quarantined_conflict(
    ward: Ward,
) -> None:
    bundle = _bundle(
        "batch",
        _observation(ward.a, "ox-1", "2708-6", 96.0, "%", _time(40)),
        _bp(ward.a, "bp-1", 131.0, 85.0, _time(35)),
    )
    assert _statuses(ward.post(bundle).json()) == ["201 Created"] * 2
    stored = ward.readings()

    again = ward.post(bundle).json()
    assert _statuses(again) == ["200 OK"] * 2
    assert ward.readings() == stored
    assert ward.quarantine() == []
    # Counted as duplicates (the panel's two halves each), labelled as FHIR imports.
    metrics = ward.client.get("/metrics").text
    assert (
        'rpmstore_ingest_readings_total{outcome="duplicate",reason="",source="fhir"} 3.0' in metrics
    )

    changed = copy.deepcopy(bundle)
    changed["entry"][0]["resource"]["valueQuantity"]["value"] = 91.0
    answer = ward.post(changed).json()
    Bundle.model_validate(answer)
    assert _statuses(answer) == ["409 Conflict", "200 OK"]
    outcome = answer["entry"][0]["response"]["outcome"]
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["code"] == "conflict"
    assert ward.readings() == stored
    [(reason, _detail, raw)] = ward.quarantine()
    assert reason == "conflict"
    assert json.loads(raw)["fhir"]["resource"]["identifier"][0]["value"] == "ox-1"
    # The stored value is never overwritten.
    [exported] = _search(ward, ward.a, code="2708-6")
    assert exported["valueQuantity"]["value"] == 96.0


def test_patient_identity_is_never_guessed(ward: Ward) -> None:
    # One MRN on two patients: ambiguous.
    ward.owner.execute(INSERT_IDENTIFIER, (ward.b.patient_id, MRN, "MRN-shared"))
    ward.owner.execute(INSERT_IDENTIFIER, (ward.a.patient_id, MRN, "MRN-shared"))
    no_device = _observation(ward.a, "x-3", "8867-4", 70.0, "/min", _time(5))
    del no_device["device"]
    unknown_device = _observation(ward.a, "x-7", "8867-4", 70.0, "/min", _time(5))
    unknown_device["device"] = {"reference": f"Device/{uuid.uuid4()}"}
    bundle = _bundle(
        "batch",
        _observation(ward.a, "x-1", "8867-4", 70.0, "/min", _time(5), mrn="MRN-shared"),
        _observation(ward.a, "x-2", "8867-4", 70.0, "/min", _time(5), mrn="MRN-nobody"),
        no_device,
        # Bravo's MRN with alpha's device: the device was not bravo's at that time.
        _observation(ward.a, "x-4", "8867-4", 70.0, "/min", _time(5), mrn=ward.b.mrn),
        _observation(ward.a, "x-5", "8867-4", 250.0, "[degF]", _time(5)),
        unknown_device,
        _observation(ward.a, "x-6", "8867-4", 72.0, "/min", _time(6)),
    )
    answer = ward.post(bundle).json()
    Bundle.model_validate(answer)
    assert _statuses(answer) == ["422 Unprocessable Entity"] * 6 + ["201 Created"]
    reasons = [
        entry["response"]["outcome"]["issue"][0]["diagnostics"].split(":")[0]
        for entry in answer["entry"][:6]
    ]
    assert reasons == [
        "ambiguous_patient",
        "unknown_patient",
        "missing_device",
        "patient_mismatch",
        "unconvertible_unit",
        "unknown_device",
    ]
    for entry in answer["entry"][:6]:
        OperationOutcome.model_validate(entry["response"]["outcome"])
    quarantined = ward.quarantine()
    assert sorted(r for r, _, _ in quarantined) == sorted(reasons)
    for _reason, _detail, raw in quarantined:
        assert json.loads(raw)["fhir"]["resource"]["resourceType"] == "Observation"
    assert ward.readings() == 1


def test_a_transaction_with_a_refused_entry_stores_nothing(ward: Ward) -> None:
    bundle = _bundle(
        "transaction",
        _observation(ward.a, "t-1", "8867-4", 70.0, "/min", _time(5)),
        _observation(ward.a, "t-2", "8867-4", 70.0, "/min", _time(4), mrn="MRN-nobody"),
    )
    response = ward.post(bundle)
    assert response.status_code == 400
    outcome = response.json()
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert outcome["issue"][0]["diagnostics"].startswith("unknown_patient")
    assert ward.readings() == 0
    assert [r for r, _, _ in ward.quarantine()] == ["unknown_patient"]

    bundle["entry"].pop()
    answer = ward.post(bundle).json()
    Bundle.model_validate(answer)
    assert answer["type"] == "transaction-response"
    assert _statuses(answer) == ["201 Created"]
    assert ward.readings() == 1


def test_bad_bundles_are_refused_with_an_operation_outcome(ward: Ward) -> None:
    bodies = (
        b"{not json",
        b'{"resourceType": "Patient"}',
        # Once a 500: the parser's recursion limit.
        b'{"resourceType": "Bundle", "type": "batch", "entry": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        # Two entry arrays: one would have been imported and the other dropped unseen.
        b'{"resourceType": "Bundle", "type": "batch", "entry": [{}], "entry": [{}, {}]}',
    )
    for body in bodies:
        response = ward.client.post("/v1/fhir", content=body, headers=ADMIN)
        assert response.status_code == 400
        OperationOutcome.model_validate(response.json())
    assert [r for r, _, _ in ward.quarantine()] == [
        "malformed_json",
        "invalid_bundle",
        "malformed_json",
        "duplicate_member",
    ]
    clinician = ward.post(_bundle("batch"), headers=ward.a.headers())
    assert clinician.status_code == 403


def _insert(
    ward: Ward, team: Team, rows: list[tuple[datetime, float, int, int | None, str]]
) -> None:
    ward.owner.execute(INSERT_BATCH)
    for measured_at, value, metric, offset, ident in rows:
        ward.owner.execute(
            INSERT_READING,
            (measured_at, value, team.device_id, team.patient_id, metric, offset, ident),
        )


def test_blood_pressure_exports_as_a_panel_across_pages(ward: Ward) -> None:
    a = ward.a
    rows: list[tuple[datetime, float, int, int | None, str]] = []
    for i in range(5):
        at = NOW - timedelta(minutes=50 - i)
        # A cuff sends heart rate at the same instant: it must not split the pair.
        rows += [
            (at, 120.0 + i, SYSTOLIC, 60, f"bp-{i}:systolic"),
            (at, 80.0 + i, DIASTOLIC, 60, f"bp-{i}:diastolic"),
            (at, 60.0 + i, HEART_RATE, 60, f"hr-{i}"),
        ]
    rows.append((NOW - timedelta(minutes=10), 118.0, SYSTOLIC, None, "lonely"))
    _insert(ward, a, rows)

    for count in (1, 2, 3, 50):
        exported = _search(ward, a, _count=count)
        assert len(exported) == 11
        assert len({o["id"] for o in exported}) == 11
    panels = [o for o in exported if o["code"]["coding"][0]["code"] == "85354-9"]
    assert [p["identifier"][0]["value"] for p in panels] == [f"bp-{i}" for i in range(5)]
    first = panels[0]
    assert (
        first["effectiveDateTime"]
        == (NOW - timedelta(minutes=50))
        .astimezone(datetime.fromisoformat("2000-01-01T00:00:00+01:00").tzinfo)
        .isoformat()
    )
    assert [
        (c["code"]["coding"][0]["code"], c["valueQuantity"]["value"], c["valueQuantity"]["code"])
        for c in first["component"]
    ] == [("8480-6", 120.0, "mm[Hg]"), ("8462-4", 80.0, "mm[Hg]")]
    lonely = exported[-1]
    assert lonely["code"]["coding"][0]["code"] == "8480-6"
    assert lonely["effectiveDateTime"].endswith("Z")  # no device offset known

    # Filters: code (a panel's code selects both halves) and date bounds.
    only_hr = _search(ward, a, code=f"{LOINC}|8867-4")
    assert [o["identifier"][0]["value"] for o in only_hr] == [f"hr-{i}" for i in range(5)]
    since = (NOW - timedelta(minutes=48)).isoformat()
    window = _search(ward, a, code="85354-9", date=[f"ge{since}", f"lt{NOW.isoformat()}"])
    assert [o["identifier"][0]["value"] for o in window] == ["bp-2", "bp-3", "bp-4", "lonely"]


def test_another_teams_patient_is_invisible_and_audited(ward: Ward) -> None:
    _insert(ward, ward.b, [(NOW - timedelta(minutes=5), 97.0, SPO2, None, "b-1")])
    a, b = ward.a, ward.b
    search = ward.client.get(
        "/v1/fhir/Observation", params={"patient": str(b.patient_id)}, headers=a.headers()
    )
    assert search.status_code == 200
    Bundle.model_validate(search.json())
    assert search.json()["entry"] == []
    compartment = ward.client.get(
        f"/v1/patients/{b.patient_id}/fhir/Observation", headers=a.headers()
    )
    assert compartment.status_code == 404
    OperationOutcome.model_validate(compartment.json())
    # Bravo's own clinician sees the reading.
    assert len(_search(ward, b)) == 1
    audit = ward.owner.execute(
        "SELECT action, patient_id, outcome, route FROM rpm.audit_log WHERE actor_subject = %s "
        "ORDER BY audit_id",
        (a.clinician,),
    ).fetchall()
    assert audit == [
        ("fhir_search_observations", b.patient_id, "not_found", "/v1/fhir/Observation"),
        (
            "fhir_search_observations",
            b.patient_id,
            "not_found",
            "/v1/patients/{patient_id}/fhir/Observation",
        ),
    ]


def test_search_parameters_are_checked(ward: Ward) -> None:
    headers = ward.a.headers()
    for params in (
        {"patient": "not-a-uuid"},
        {"patient": str(ward.a.patient_id), "code": "no-such-code"},
        {"patient": str(ward.a.patient_id), "code": "http://snomed.info/sct|271649006"},
        {"patient": str(ward.a.patient_id), "date": "ge2026-11-24T10:00:00"},
        {"patient": str(ward.a.patient_id), "_cursor": "bm9wZQ"},
    ):
        response = ward.client.get("/v1/fhir/Observation", params=params, headers=headers)
        # Every refusal is the 400 OperationOutcome the OpenAPI document promises.
        assert response.status_code == 400, params
        OperationOutcome.model_validate(response.json())


def test_the_database_scopes_the_export_function(ward: Ward, api_db_url: str) -> None:
    """The API role reads readings only through the definer function, and only in scope."""
    _insert(ward, ward.b, [(NOW - timedelta(minutes=5), 97.0, SPO2, None, "b-1")])
    call = (
        "SELECT count(*) FROM rpm.fhir_patient_readings("
        "%s, NULL, '-infinity', 'infinity', NULL, NULL, NULL, 100)"
    )
    acting = (
        "SELECT set_config('rpm.acting_subject', %s, true), "
        "set_config('rpm.acting_roles', 'clinician', true), "
        "set_config('rpm.acting_care_teams', %s, true)"
    )
    with psycopg.connect(api_db_url) as api:
        # Nobody acting: nothing, not an error that would tell the patient exists.
        assert api.execute(call, (ward.b.patient_id,)).fetchone() == (0,)
        api.execute(acting, (ward.a.clinician, str(ward.a.care_team_id)))
        assert api.execute(call, (ward.b.patient_id,)).fetchone() == (0,)
        api.rollback()
        api.execute(acting, (ward.b.clinician, str(ward.b.care_team_id)))
        assert api.execute(call, (ward.b.patient_id,)).fetchone() == (1,)
        api.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            api.execute("SELECT count(*) FROM rpm.readings")
