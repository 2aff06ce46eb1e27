"""The alert outbox: every committed ingest batch asks for its evaluation in its own transaction,
and whichever worker claims it evaluates and deletes it in one transaction."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from fastapi.testclient import TestClient

from alerting import AlertingOptions, AlertWorker
from alerting.evaluator import AlertEvaluator
from alerting.outbox import drain_outbox
from ingest.committer import GroupCommitter, IngestRequest, QuarantineEntry
from ingest.store import ValidatedReading
from rpmstore.cli import main
from schema.registry import assign_device, register_device, register_patient
from tests.apphelpers import make_app
from tests.integration.test_alerting import SPO2, SPO2_BELOW_85, alerts, new_patient, readings


def outbox_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT batch_id, patient_ids, metric_ids, range_starts, range_ends, lows, highs"
        " FROM rpm.alert_outbox ORDER BY batch_id"
    ).fetchall()


def request(batch: list[ValidatedReading]) -> IngestRequest:
    return IngestRequest(batch, list(range(len(batch))), (), b"{}", received_at=time.time())


async def commit_only(db_url: str, *requests: IngestRequest) -> list[int]:
    """Commit ``requests`` through a committer that writes the outbox, with no alert worker:
    as if the process had died right after each COMMIT."""
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        committer = GroupCommitter(pool, source="http", alert_outbox=True)
        await committer.start()
        try:
            return [(await committer.submit(r)).batch_id for r in requests]
        finally:
            await committer.stop()


def with_connection(db_url: str, body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(db_url)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_a_batch_writes_its_touched_series_in_its_own_transaction(
    conn: psycopg.Connection, db_url: str
) -> None:
    first, second = new_patient(conn), new_patient(conn)
    batch = readings(first, [(0, 80.0), (3, 97.0), (1, 70.0)], metric_id=SPO2) + readings(
        second, [(5, 99.0)], metric_id=SPO2
    )
    (batch_id,) = asyncio.run(commit_only(db_url, request(batch)))
    ((stored_batch, patients, metrics, starts, ends, lows, highs),) = outbox_rows(conn)
    assert stored_batch == batch_id
    series = {
        (p, m): (s, e, lo, hi)
        for p, m, s, e, lo, hi in zip(patients, metrics, starts, ends, lows, highs, strict=True)
    }
    micros = [int(r.measured_at.timestamp() * 1_000_000) for r in batch]
    assert series == {
        (first, SPO2): (micros[0], micros[1], 70.0, 97.0),
        (second, SPO2): (micros[3], micros[3], 99.0, 99.0),
    }
    # Not evaluated yet: no worker ran.
    assert alerts(conn, first) == []


def test_a_batch_committed_by_a_process_that_died_is_evaluated_by_the_next_worker(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    asyncio.run(commit_only(db_url, request(readings(patient, [(0, 80.0)], metric_id=SPO2))))
    assert len(outbox_rows(conn)) == 1

    async def next_process() -> int:
        async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
            worker = AlertWorker(pool)
            await worker.start()  # looks at the outbox at once, before any commit of its own
            await worker.drain()
            await worker.stop()
            return worker.evaluations

    assert asyncio.run(next_process()) == 1
    assert [(a["rule_id"], a["status"]) for a in alerts(conn, patient)] == [(SPO2_BELOW_85, "open")]
    assert outbox_rows(conn) == []


def test_a_failed_evaluation_leaves_the_batch_in_the_outbox(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    asyncio.run(commit_only(db_url, request(readings(patient, [(0, 80.0)], metric_id=SPO2))))

    class Failing(AlertEvaluator):
        async def evaluate_in_transaction(
            self,
            conn: asyncpg.Connection,
            touched: Any,  # noqa: ARG002 - the signature of the method it replaces
        ) -> Any:
            await conn.execute("SELECT 1/0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        with_connection(db_url, lambda c: drain_outbox(c, Failing()))
    assert len(outbox_rows(conn)) == 1
    assert with_connection(db_url, lambda c: drain_outbox(c, AlertEvaluator())) == 1
    assert [a["rule_id"] for a in alerts(conn, patient)] == [SPO2_BELOW_85]
    assert outbox_rows(conn) == []


def test_batches_claimed_by_one_worker_are_skipped_by_another(
    conn: psycopg.Connection, db_url: str
) -> None:
    first, second = new_patient(conn), new_patient(conn)
    first_batch, second_batch = asyncio.run(
        commit_only(
            db_url,
            request(readings(first, [(0, 80.0)], metric_id=SPO2)),
            request(readings(second, [(0, 80.0)], metric_id=SPO2)),
        )
    )
    with psycopg.connect(db_url) as holder:
        # Another worker, mid-evaluation, holds the first batch.
        holder.execute(
            "SELECT 1 FROM rpm.alert_outbox WHERE batch_id = %s FOR UPDATE", (first_batch,)
        )
        assert with_connection(db_url, lambda c: drain_outbox(c, AlertEvaluator())) == 1
        assert [row[0] for row in outbox_rows(conn)] == [first_batch]
        assert alerts(conn, first) == []
        assert len(alerts(conn, second)) == 1
        holder.rollback()  # that worker died: its claim is released
    assert with_connection(db_url, lambda c: drain_outbox(c, AlertEvaluator())) == 1
    assert len(alerts(conn, first)) == 1
    assert outbox_rows(conn) == []
    assert second_batch > first_batch


def test_duplicates_still_ask_for_evaluation_and_quarantine_only_batches_do_not(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    batch = readings(patient, [(0, 96.0)], metric_id=SPO2)
    quarantined = IngestRequest(
        (), (), (QuarantineEntry("unknown_metric", "no such metric", 0),), b"{}", time.time()
    )
    asyncio.run(commit_only(db_url, request(batch)))
    asyncio.run(commit_only(db_url, request(batch), quarantined))
    # The retry (all duplicates, the merge path) wrote a row; the quarantine-only batch did not.
    assert len(outbox_rows(conn)) == 2


def test_alerts_sweep_evaluates_what_no_worker_took(
    conn: psycopg.Connection,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    patient = new_patient(conn)
    asyncio.run(commit_only(db_url, request(readings(patient, [(0, 80.0)], metric_id=SPO2))))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MQTT_URL", "mqtt://unused@127.0.0.1:1")
    monkeypatch.setenv("RPMSTORE_INSTANCE", f"test-{uuid.uuid4().hex[:8]}")
    assert main(["alerts", "sweep"]) == 0
    assert "outbox batches evaluated 1" in capsys.readouterr().out
    assert [a["rule_id"] for a in alerts(conn, patient)] == [SPO2_BELOW_85]
    assert outbox_rows(conn) == []


def test_alerts_run_evaluates_the_outbox_of_ingestors_that_do_not(
    conn: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """`rpmstore alerts run`: the alert service for RPMSTORE_ALERTS_INLINE=false ingestors."""
    log = tmp_path / "alerts.log"
    with log.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", "alerts", "run", "--poll", "0.2"],
            env={
                **os.environ,
                "DATABASE_URL": db_url,
                "MQTT_URL": "mqtt://unused@127.0.0.1:1",
                "RPMSTORE_INSTANCE": f"test-{uuid.uuid4().hex[:8]}",
                "RPMSTORE_LOG_FORMAT": "json",
            },
            stdout=out,
            stderr=out,
        )
    try:
        patient = new_patient(conn)
        asyncio.run(commit_only(db_url, request(readings(patient, [(0, 80.0)], metric_id=SPO2))))
        deadline = time.monotonic() + 60  # bounds a hung test; not a speed requirement
        while not alerts(conn, patient) and time.monotonic() < deadline:
            assert service.poll() is None, log.read_text()
            time.sleep(0.1)
        assert [a["rule_id"] for a in alerts(conn, patient)] == [SPO2_BELOW_85]
        assert outbox_rows(conn) == []
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0, log.read_text()


def test_an_api_without_inline_alerting_only_writes_the_outbox(
    conn: psycopg.Connection, db_url: str, api_db_url: str
) -> None:
    patient = register_patient(conn)
    device = register_device(
        conn, kind="pulse_oximeter", manufacturer="Acme", model="OX-1", serial_number="OUTBOX-1"
    )
    now = datetime.now(UTC).replace(microsecond=0)
    assign_device(
        conn, device_id=device.device_id, patient_id=patient, valid_from=now - timedelta(days=1)
    )
    body = {"readings": [{"metric": "spo2", "value": 80.0, "unit": "%", "time": now.isoformat()}]}
    app = make_app(db_url, api_db_url, alerting=AlertingOptions(enabled=False))
    with TestClient(app) as client:
        response = client.post(
            "/v1/readings",
            content=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {device.token}"},
        )
        assert response.status_code == 200, response.text
        assert client.app.state.ingest.alerts is None  # type: ignore[attr-defined]
    assert alerts(conn, patient) == []
    ((batch_id, patients, *_),) = outbox_rows(conn)
    assert (batch_id, patients) == (response.json()["batch_id"], [patient])
