"""Hostile input to the clinician, admin and FHIR routes: a clear 4xx, never a 5xx.

Each case is one that once got a 500 or a confusing answer (issue 16): bodies the 422 handler
could not encode (lone surrogates, NaN/Infinity), FHIR parameters answered with FastAPI's 422 or
a 500 instead of a 400 OperationOutcome, timeline ranges reported as a body error on a GET, and
tokens whose registered claims have the wrong JSON type.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.apphelpers import TEST_AUTH, TEST_JWT_SECRET, bearer, make_app
from tests.integration.test_clinician_access import INSERT_RULE, Ward
from tests.integration.test_clinician_access import _team as make_team

pytestmark = pytest.mark.slow  # hostile values against every clinician and admin route

ADMIN = "hostile-admin"


@pytest.fixture
def ward(db_url: str, api_db_url: str, conn: psycopg.Connection) -> Iterator[Ward]:
    rule = conn.execute(INSERT_RULE).fetchone()[0]  # type: ignore[index]
    a, b = make_team(conn, "alpha", rule), make_team(conn, "bravo", rule)
    # Server errors must come back as responses (as a client sees them), not as exceptions.
    with TestClient(make_app(db_url, api_db_url), raise_server_exceptions=False) as client:
        yield Ward(client, a, b, conn)


def _raw_json(client: TestClient, method: str, url: str, body: str, headers: dict[str, str]) -> Any:
    """Send ``body`` exactly as written: json.dumps could not write a bare NaN member name."""
    return client.request(
        method,
        url,
        content=body.encode("utf-8", "surrogatepass"),
        headers={**headers, "Content-Type": "application/json"},
    )


def _rule_id(ward: Ward) -> uuid.UUID:
    found = ward.owner.execute("SELECT rule_id FROM rpm.alert_rules LIMIT 1").fetchone()
    assert found is not None
    return uuid.UUID(str(found[0]))


# --- class 6: a validation-error handler that cannot fail --------------------------------------

_UNENCODABLE = ['"\\ud800"', '"a\\udfffb"', "NaN", "Infinity", "-Infinity"]


def _hostile_bodies(ward: Ward) -> list[tuple[str, str, str, dict[str, str]]]:
    """(method, url, body template with {v}, headers): the routes issue 16 found."""
    admin = bearer(ADMIN, ["admin"])
    rule = _rule_id(ward)
    return [
        ("POST", f"/v1/alerts/{ward.a.alert_id}/ack", '{{"note": {v}}}', ward.a.headers()),
        ("POST", f"/v1/alerts/{ward.a.alert_id}/resolve", '{{"note": {v}}}', ward.a.headers()),
        ("POST", "/v1/admin/patients", '{{"given_name": {v}}}', admin),
        ("POST", "/v1/admin/patients", '{{"birth_date": {v}, "sex": {v}}}', admin),
        ("POST", "/v1/admin/care-teams", '{{"name": {v}}}', admin),
        (
            "POST",
            "/v1/admin/rules",
            '{{"name": {v}, "metric": "spo2", "kind": "below", "threshold": {v}, '
            '"severity": "major"}}',
            admin,
        ),
        (
            "PUT",
            f"/v1/admin/rules/{rule}/patients/{ward.a.patient_id}",
            '{{"threshold": {v}, "enabled": {v}}}',
            admin,
        ),
        # The member name itself unencodable: it comes back in loc for a forbidden extra.
        ("POST", "/v1/admin/care-teams", '{{"name": 1, {v}: 2}}', admin),
    ]


@pytest.mark.parametrize("value", _UNENCODABLE)
def test_unencodable_input_gets_a_422_that_does_not_echo_it(ward: Ward, value: str) -> None:
    for method, url, template, headers in _hostile_bodies(ward):
        body = template.format(v=value)
        response = _raw_json(ward.client, method, url, body, headers)
        assert response.status_code == 422, (url, body, response.text)
        errors = response.json()["detail"]
        assert errors and all(set(e) == {"loc", "msg", "type"} for e in errors), errors
        # Minimum necessary: where and why, never the value sent back.
        assert "input" not in response.text and "ctx" not in response.text
    # A refused input changes nothing: the alert is still open.
    status = ward.owner.execute(
        "SELECT status FROM rpm.alerts WHERE alert_id = %s", (ward.a.alert_id,)
    ).fetchone()
    assert status == ("open",)


def test_a_lone_surrogate_in_a_member_name_is_reported_encodably(ward: Ward) -> None:
    response = _raw_json(
        ward.client,
        "POST",
        f"/v1/alerts/{ward.a.alert_id}/ack",
        '{"note": ["\\ud800"]}',
        ward.a.headers(),
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "note"]


def test_a_repeated_member_in_a_json_body_is_refused_not_read_one_way(ward: Ward) -> None:
    """json.loads keeps the last of repeated members: {"threshold": 90, "threshold": 10} made
    a rule of 10 while the client also said 90. Refused like ambiguous device payloads."""
    admin = bearer(ADMIN, ["admin"])
    for method, url, body, headers in [
        (
            "POST",
            f"/v1/alerts/{ward.a.alert_id}/ack",
            '{"note": "a", "note": "b"}',
            ward.a.headers(),
        ),
        (
            "POST",
            "/v1/admin/rules",
            '{"name": "r", "metric": "spo2", "kind": "below", "threshold": 90, '
            '"threshold": 10, "severity": "major"}',
            admin,
        ),
        ("POST", "/v1/admin/care-teams", '{"name": "x", "extra": {"a": 1, "\\u0061": 2}}', admin),
    ]:
        response = _raw_json(ward.client, method, url, body, headers)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["type"] == "json_invalid"
        assert "appears more than once" in error["msg"]
    status = ward.owner.execute(
        "SELECT status FROM rpm.alerts WHERE alert_id = %s", (ward.a.alert_id,)
    ).fetchone()
    assert status == ("open",)
    names = ward.owner.execute("SELECT count(*) FROM rpm.alert_rules WHERE name = 'r'").fetchone()
    assert names == (0,)


# --- class 7: every FHIR error is an OperationOutcome naming the parameter ---------------------


def _outcome(response: Any) -> list[dict[str, Any]]:
    assert response.headers["content-type"].startswith("application/fhir+json"), response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    issues: list[dict[str, Any]] = body["issue"]
    return issues


@pytest.mark.parametrize(
    ("params", "parameter", "code"),
    [
        ({"date": "ge2026-13-45"}, "date", "invalid"),  # was a 500: month must be in 1..12
        ({"date": "ge2026-02-30"}, "date", "invalid"),
        ({"date": "ge9999-12-31T23:59:59.999999-14:00"}, "date", "invalid"),
        ({"_count": "0"}, "_count", "invalid"),  # was FastAPI's 422
        ({"_count": "100000"}, "_count", "invalid"),
        ({"_count": "ten"}, "_count", "invalid"),
        ({"_cursor": "garbage"}, "_cursor", "invalid"),  # was a 422 naming "cursor"
        ({"_cursor": "WzEsMiwzXQ=="}, "_cursor", "invalid"),  # base64 of [1,2,3]
        ({"_cursor": "x" * 600}, "_cursor", "invalid"),
        ({"code": "http://snomed.info/sct|123"}, "code", "invalid"),
        ({"patient": None}, "patient", "required"),  # was FastAPI's 422
        ({"patient": "Patient/not-a-uuid"}, "patient", "invalid"),
    ],
)
def test_fhir_search_errors_are_400_operation_outcomes(
    ward: Ward, params: dict[str, str | None], parameter: str, code: str
) -> None:
    query = {"patient": f"Patient/{ward.a.patient_id}", **params}
    sent = {k: v for k, v in query.items() if v is not None}
    response = ward.client.get("/v1/fhir/Observation", params=sent, headers=ward.a.headers())
    assert response.status_code == 400, response.text
    (issue,) = _outcome(response)
    assert (issue["severity"], issue["code"], issue["expression"]) == ("error", code, [parameter])
    assert parameter in issue["diagnostics"]


@pytest.mark.parametrize(
    "params", [{"_count": "0"}, {"_cursor": "garbage"}, {"date": "ge2026-13-45"}]
)
def test_the_compartment_search_answers_the_same_way(ward: Ward, params: dict[str, str]) -> None:
    response = ward.client.get(
        f"/v1/patients/{ward.a.patient_id}/fhir/Observation",
        params=params,
        headers=ward.a.headers(),
    )
    assert response.status_code == 400, response.text
    (issue,) = _outcome(response)
    assert issue["expression"] == [next(iter(params))]


def test_fhir_refuses_a_bad_path_parameter_and_a_bad_token_as_outcomes(ward: Ward) -> None:
    bad_path = ward.client.get("/v1/patients/not-a-uuid/fhir/Observation", headers=ward.a.headers())
    assert bad_path.status_code == 400
    assert _outcome(bad_path)[0]["expression"] == ["patient_id"]
    no_token = ward.client.get("/v1/fhir/Observation", params={"patient": str(ward.a.patient_id)})
    assert no_token.status_code == 401
    assert _outcome(no_token)[0]["code"] == "login"


def test_the_openapi_document_promises_400_not_422_for_fhir(ward: Ward) -> None:
    paths = ward.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/fhir/Observation", "/v1/patients/{patient_id}/fhir/Observation"):
        responses = paths[path]["get"]["responses"]
        assert "400" in responses and "422" not in responses
    # The other routes keep FastAPI's validation error.
    assert "422" in paths["/v1/patients/{patient_id}/vitals"]["get"]["responses"]


# --- class 8: timeline errors name the parameter and the reason --------------------------------


@pytest.mark.parametrize(
    ("start", "end", "named"),
    [
        # Year 0 in UTC: the buckets could not be read back ("loc": ["body"], 422 on a GET).
        ("0001-01-01T00:00:00+01:00", "0001-01-01T12:00:00Z", "start"),
        ("1969-12-31T23:00:00Z", "1970-01-01T01:00:00Z", "start"),
        # Year 10000 in UTC.
        ("9999-12-31T00:00:00Z", "9999-12-31T23:59:59-14:00", "end"),
    ],
)
def test_timeline_ranges_outside_the_stored_range_name_the_parameter(
    ward: Ward, start: str, end: str, named: str
) -> None:
    for resolution in ("auto", "1h", "1d"):
        response = ward.client.get(
            f"/v1/patients/{ward.a.patient_id}/vitals",
            params={"metric": "spo2", "start": start, "end": end, "resolution": resolution},
            headers=ward.a.headers(),
        )
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", named]
        assert error["msg"].startswith(f"{named} must be between 1970-01-01T00:00:00Z and")


def test_timeline_at_the_edges_of_the_stored_range_is_answered(ward: Ward) -> None:
    for start, end in [
        ("1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z"),
        ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59.999999Z"),
    ]:
        response = ward.client.get(
            f"/v1/patients/{ward.a.patient_id}/vitals",
            params={"metric": "spo2", "start": start, "end": end, "resolution": "1h"},
            headers=ward.a.headers(),
        )
        assert response.status_code == 200, response.text


# --- class 9: registered claims of the wrong type are refused over HTTP ------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(int(time.time()) + 3600)},  # once accepted as an expiry
        {"nbf": "0"},
        {"iat": "now"},
        {"sub": ["alpha-clinician"]},
        {"aud": [TEST_AUTH.audience, 42]},
    ],
)
def test_tokens_with_mistyped_claims_are_401(ward: Ward, claims: dict[str, Any]) -> None:
    payload = {
        "sub": ward.a.clinician,
        "roles": ["clinician"],
        "care_teams": [str(ward.a.care_team_id)],
        "iss": TEST_AUTH.issuer,
        "aud": TEST_AUTH.audience,
        "exp": int(time.time()) + 3600,
        **claims,
    }
    token = jwt.api_jws.PyJWS().encode(json.dumps(payload).encode(), TEST_JWT_SECRET, "HS256")
    response = ward.client.get("/v1/alerts", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
