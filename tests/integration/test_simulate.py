"""The ward simulator against the real ingest processes, TimescaleDB and Mosquitto.

``rpmstore ingest mqtt`` and ``rpmstore serve`` run as child processes on a fresh database, the
simulator sends over MQTT (as the gateway account) or HTTP (each device's token), and the report
must match what the database holds: every reading sent is stored, a duplicate or quarantined.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from rpmstore.cli import token_signer
from rpmstore.localstack.model import StackUrls
from rpmstore.localstack.mosquitto import GATEWAY_USER, INGEST_USER
from rpmstore.settings import Settings
from rpmstore.simulate import (
    Endpoints,
    SimulationConfig,
    SimulationReport,
    Via,
    run_simulation,
)
from rpmstore.simulate_ward import Shares
from rpmstore.ward_demo import DemoOptions, child, free_port, run_ward_demo, wait_ready
from tests.conftest import Broker

pytestmark = pytest.mark.slow  # simulated wards over both transports

# High shares so that every kind of traffic occurs in a 2-second run of ~100 readings/s.
SHARES = Shares(retry=0.12, late=0.12, bad=0.12)


@dataclass(frozen=True)
class Servers:
    db_url: str
    api_url: str
    gateway_url: str


@pytest.fixture
def servers(db_url: str, api_db_url: str, mqtt_broker: Broker, tmp_path: Path) -> Iterator[Servers]:
    """The MQTT ingestor and the HTTP API as child processes on this test's database."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "API_DATABASE_URL": api_db_url,
        "MQTT_URL": mqtt_broker.url(INGEST_USER),
        # A group of its own: no other test's ingestor session shares these messages.
        "RPMSTORE_MQTT_GROUP": f"g{uuid.uuid4().hex[:8]}",
        "RPMSTORE_MQTT_CLIENT_ID": f"sim-{uuid.uuid4().hex[:8]}",
        "RPMSTORE_LOG_FORMAT": "json",
    }
    api_url = f"http://127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        ingestor = stack.enter_context(child(["ingest", "mqtt"], env=env, log_dir=tmp_path))
        port = api_url.rsplit(":", 1)[1]
        api = stack.enter_context(child(["serve", "--port", port], env=env, log_dir=tmp_path))
        wait_ready(ingestor, api, api_url)
        yield Servers(db_url, api_url, mqtt_broker.url(GATEWAY_USER))


def simulate(servers: Servers, via: Via, seed: int) -> SimulationReport:
    config = SimulationConfig(
        patients=3, rate=100.0, seconds=2.0, via=via, seed=seed, shares=SHARES, wait_s=60.0
    )
    endpoints = Endpoints(servers.db_url, api_url=servers.api_url, mqtt_url=servers.gateway_url)
    return run_simulation(config, endpoints)


def scalar(conn: psycopg.Connection, statement: str) -> int:
    row = conn.execute(statement).fetchone()
    assert row is not None
    return int(row[0])


def assert_database_matches(report: SimulationReport, db_url: str) -> None:
    traffic, db = report.traffic, report.database
    sent = traffic.total_readings
    # Every kind of traffic happened, so every rule below was exercised.
    assert all(traffic.payloads[c] > 0 for c in ("live", "late", "retry", "bad")), traffic
    assert report.delivery.undelivered_payloads == 0
    assert report.delivery.delivered_readings == sent
    assert report.complete
    assert db.stored + db.duplicates + sum(db.quarantined.values()) == sent
    assert report.accounted

    # Retries are exact re-sends: each of their readings is a duplicate, never a new row.
    assert db.duplicates == traffic.readings["retry"]
    assert db.conflicts == 0
    assert db.stored == traffic.readings["live"] + traffic.readings["late"]
    # Each bad payload is quarantined with the reason its kind calls for.
    assert dict(db.quarantined) == dict(traffic.bad_reasons)

    with psycopg.connect(db_url, autocommit=True) as conn:
        assert scalar(conn, "SELECT count(*) FROM rpm.readings") == db.stored == db.ward_rows
        assert scalar(conn, "SELECT sum(duplicate_count) FROM rpm.ingest_batches") == db.duplicates
        rows = conn.execute("SELECT reason, count(*) FROM rpm.ingest_quarantine GROUP BY reason")
        reasons = {str(reason): int(count) for reason, count in rows}
        assert reasons == dict(traffic.bad_reasons)
        # Late readings were measured at least two minutes before they were received.
        late_rows = scalar(
            conn,
            "SELECT count(*) FROM rpm.readings "
            "WHERE received_at - measured_at > interval '90 seconds'",
        )
        assert late_rows == traffic.readings["late"]
        # Every row is attributed to the patient its device is assigned to.
        patients = scalar(conn, "SELECT count(DISTINCT patient_id) FROM rpm.readings")
        assert patients == len(report.ward.patients)


def test_simulated_ward_over_http_is_fully_accounted_for(servers: Servers) -> None:
    report = simulate(servers, "http", seed=11)
    assert_database_matches(report, servers.db_url)
    # The API's answers say the same as the database.
    delivery, db = report.delivery, report.database
    assert delivery.answered_stored == db.stored
    assert delivery.answered_duplicates == db.duplicates
    assert dict(delivery.answered_quarantined) == dict(db.quarantined)


def test_simulated_ward_over_mqtt_is_fully_accounted_for(servers: Servers) -> None:
    report = simulate(servers, "mqtt", seed=12)
    assert_database_matches(report, servers.db_url)
    assert report.delivery.transport["PUBACK"] == report.delivery.payloads


def test_ward_demo_runs_both_transports(
    db_url: str, api_db_url: str, mqtt_broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = StackUrls(
        database_url=db_url,
        api_database_url=api_db_url,
        admin_database_url=None,
        mqtt_url=mqtt_broker.url(INGEST_USER),
        mqtt_gateway_url=mqtt_broker.url(GATEWAY_USER),
    )
    options = DemoOptions(patients=2, rate=50.0, seconds=1.0, seed=3)
    assert run_ward_demo(urls, options, token_signer(Settings())) == 0
    out = capsys.readouterr().out
    # The clinician's view through the API: the demo's patients, in a care team of their own.
    assert "the ward as demo-clinician sees it" in out
    assert out.count("SIM-") >= 2 * options.patients
    assert "simulated ward over MQTT" in out
    assert "simulated ward over HTTP" in out
    assert out.count("accounted  stored + duplicates + quarantined") == 2
    assert "read back from the rpm.readings hypertable" in out
