"""Schemathesis against the real API process: no server errors, responses match the OpenAPI.

The API runs as ``rpmstore serve`` (uvicorn, both pools, its own role) on a fresh database with
a small ward registered, and every operation of its OpenAPI document is called with generated
inputs, once as an admin (who may see everything) and once as a clinician of one care team.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
