"""Schemathesis against the real API process: no server errors, responses match the OpenAPI.

The API runs as ``rpmstore serve`` (uvicorn, both pools, its own role) on a fresh database with
a small ward registered, and every operation of its OpenAPI document is called with generated
inputs, once as an admin (who may see everything) and once as a clinician of one care team.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx2
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from schema.registry import PatientIdentity, assign_device, register_device, register_patient
from tests.apphelpers import bearer
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # Schemathesis over every operation

TEAM = "INSERT INTO rpm.care_teams (name) VALUES ('fuzz') RETURNING care_team_id"
CLINICIAN = (
    "INSERT INTO rpm.clinicians (subject, display_name) VALUES ('fuzzer', 'F') "
    "RETURNING clinician_id"
)
MEMBER = "INSERT INTO rpm.care_team_members VALUES (%s, %s)"
TEAM_PATIENT = "INSERT INTO rpm.care_team_patients VALUES (%s, %s)"


@pytest.fixture(scope="module")
def live_api(
    pg_server: object, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, uuid.UUID]]:
    from tests.conftest import DatabaseFactory, PgServer

    assert isinstance(pg_server, PgServer)
    factory = DatabaseFactory(pg_server)
    db_url = factory.clone(migrated_template)
    name = str(psycopg.conninfo.conninfo_to_dict(db_url)["dbname"])
    with psycopg.connect(db_url, autocommit=True) as conn:
        team = conn.execute(TEAM).fetchone()[0]  # type: ignore[index]
        clinician = conn.execute(CLINICIAN).fetchone()[0]  # type: ignore[index]
        conn.execute(MEMBER, (team, clinician))
        patient = register_patient(conn, identity=PatientIdentity(given_name="Fuzz"))
        conn.execute(TEAM_PATIENT, (team, patient))
        device = register_device(
            conn, kind="scale", manufacturer="Acme", model="S", serial_number="fz"
        )
        from datetime import UTC, datetime, timedelta

        assign_device(
            conn,
            device_id=device.device_id,
            patient_id=patient,
            valid_from=datetime.now(UTC) - timedelta(days=1),
        )
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", "serve", "--port", str(port)],
            env={
                **os.environ,
                "DATABASE_URL": db_url,
                "API_DATABASE_URL": pg_server.url(name, api=True),
                "MQTT_URL": "mqtt://unused@127.0.0.1:1",
                "RPMSTORE_LOG_LEVEL": "WARNING",
                # Thousands of calls from one address, many refused as a device would be
                # (an admin's token on POST /v1/readings): the failed-auth budget would soon
                # answer 429 to everything. The limits have tests of their own (test_edge).
                "RPMSTORE_HTTP_AUTH_FAILURE_RATE_PER_S": "0",
            },
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base, team
    finally:
        process.terminate()
        process.wait(timeout=30)
        factory.drop_all()
    # A 5xx is logged by the server with its traceback: surface it in the failure.
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _fuzz_every_operation(base: str, headers: dict[str, str]) -> int:
    """Generated calls to every operation; returns how many operations were exercised.

    Driven through schemathesis' Python API (its pytest plugin does not support pytest 9).
    """
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    exercised = 0
    for result in api.get_all_operations():
        # An operation schemathesis cannot read is itself a defect of the OpenAPI document.
        assert isinstance(result, Ok), result.err()
        operation = result.ok()

        @given(case=operation.as_strategy())
        @_SETTINGS
        def call(case: schemathesis.Case[Any]) -> None:
            # Server errors and non-conforming bodies fail; 4xx is the API doing its job.
            case.call_and_validate(
                headers=headers, checks=[not_a_server_error, response_schema_conformance]
            )

        call()
        exercised += 1
    return exercised


def test_every_operation_conforms_for_an_admin(live_api: tuple[str, uuid.UUID]) -> None:
    base, _ = live_api
    assert _fuzz_every_operation(base, bearer("fuzz-admin", ["admin"])) >= 10


def test_every_operation_conforms_for_a_clinician(live_api: tuple[str, uuid.UUID]) -> None:
    base, team = live_api
    assert _fuzz_every_operation(base, bearer("fuzzer", ["clinician"], [team])) >= 10


def _fuzz_every_operation_negatively(base: str, headers: dict[str, str]) -> int:
    """Schemathesis' negative mode: inputs that break the documented schema (wrong types,
    out-of-range numbers, missing required members) must be a documented 4xx, never a 5xx."""
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    exercised = 0
    for result in api.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()

        @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
        @_SETTINGS
        def call(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(
                headers=headers, checks=[not_a_server_error, response_schema_conformance]
            )

        try:
            call()
        except Unsatisfiable:
            continue  # nothing to violate: an operation without parameters or body
        exercised += 1
    return exercised


def test_schema_violations_are_refused_with_a_documented_4xx(
    live_api: tuple[str, uuid.UUID],
) -> None:
    base, team = live_api
    for headers in (bearer("fuzz-admin", ["admin"]), bearer("fuzzer", ["clinician"], [team])):
        assert _fuzz_every_operation_negatively(base, headers) >= 10


# Values a schema cannot describe, written as JSON text: what a hostile client or broken
# firmware sends (issue 16 found 500s with the first five). Each replaces one body member.
_HOSTILE_JSON = (
    "NaN",
    "Infinity",
    "-Infinity",
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\u0000"',
    "1" + "0" * 400,  # beyond a double
    "1e999",
    "[" * 2000 + "]" * 2000,  # deeper than the parsers' limits
    '{"a": 1, "a": 2}',
)
# Already percent-encoded query values: invalid UTF-8 (a UTF-8-encoded lone surrogate, a
# stray continuation byte), NUL, out-of-range dates and numbers, and sheer length.
_HOSTILE_QUERY = (
    "%ED%A0%80",
    "%FF",
    "%00",
    "ge2026-13-45",
    "2026-02-30T00:00:00Z",
    "0001-01-01T00:00:00%2B01:00",
    "9999-12-31T23:59:59-14:00",
    "0",
    "-1",
    "99999999999999999999999999",
    "NaN",
    "x" * 4000,
)


def _with_member(body: dict[str, Any], name: str, value_text: str) -> str:
    """``body`` as JSON text with member ``name`` written as ``value_text`` verbatim."""
    rest = {k: v for k, v in body.items() if k != name}
    head = json.dumps(rest)[:-1]
    return f"{head}{', ' if rest else ''}{json.dumps(name)}: {value_text}}}"


def _hostile_requests(case: schemathesis.Case[Any]) -> Iterator[tuple[str, bytes | None]]:
    """(query string, body) variants of a valid generated case, one hostile value each."""
    query = {k: v for k, v in (case.query or {}).items() if not isinstance(v, list)}

    def encoded(params: dict[str, Any], raw: dict[str, str] | None = None) -> str:
        parts = [f"{quote(str(k))}={quote(str(v))}" for k, v in params.items()]
        parts += [f"{quote(k)}={v}" for k, v in (raw or {}).items()]
        return "&".join(parts)

    body = case.body if isinstance(case.body, dict) else None
    plain = json.dumps(body).encode() if body is not None else None
    names = [p.name for p in case.operation.iter_parameters() if p.location.value == "query"]
    for name in names:
        for value in _HOSTILE_QUERY:
            others = {k: v for k, v in query.items() if k != name}
            yield encoded(others, {name: value}), plain
    if body is None:
        return
    for name in list(body) or ["note"]:
        for value in _HOSTILE_JSON:
            yield encoded(query), _with_member(body, name, value).encode("utf-8", "surrogatepass")
    if body:
        # A repeated member: the standard JSON parsers keep the last without a word.
        name = next(iter(body))
        text = json.dumps(body)[:-1] + f", {json.dumps(name)}: {json.dumps(body[name])}}}"
        yield encoded(query), text.encode()


def _fuzz_with_hostile_values(base: str, headers: dict[str, str]) -> int:
    """Every operation, its valid generated inputs each corrupted one value at a time."""
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    sent = 0
    with httpx2.Client(base_url=base, timeout=30) as client:
        for result in api.get_all_operations():
            assert isinstance(result, Ok), result.err()
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(_SETTINGS, max_examples=2)
            def call(case: schemathesis.Case[Any]) -> None:
                nonlocal sent
                path = case.formatted_path
                for query, body in _hostile_requests(case):
                    response = client.request(
                        case.method,
                        f"{path}?{query}" if query else path,
                        content=body,
                        headers={**headers, "Content-Type": case.media_type or "application/json"},
                    )
                    sent += 1
                    where = f"{case.method} {path}?{query[:200]} {(body or b'')[:200]!r}"
                    assert response.status_code < 500, (where, response.text[:500])
                    if response.content:
                        response.json()  # every error body is JSON that parses

            call()
    return sent


def test_values_no_schema_describes_are_refused_never_a_5xx(
    live_api: tuple[str, uuid.UUID],
) -> None:
    base, team = live_api
    assert _fuzz_with_hostile_values(base, bearer("fuzz-admin", ["admin"])) > 100
    assert _fuzz_with_hostile_values(base, bearer("fuzzer", ["clinician"], [team])) > 100
