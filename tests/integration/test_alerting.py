"""Alert rules against a real TimescaleDB: thresholds, sustained breaches, missing data,
overrides, out-of-order readings, concurrent evaluators, snapshots and the lifecycle."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from alerting import (
    AlertEvaluator,
    AlertNotFoundError,
    AlertWorker,
    EvaluationResult,
    IllegalAlertTransitionError,
    acknowledge_alert,
    resolve_alert,
    sweep_missing_data,
)
from ingest import touched_ranges
from ingest.committer import GroupCommitter, IngestRequest
from ingest.store import ValidatedReading, store_readings
from rpmstore.cli import main
from schema.registry import assign_device, register_device, register_patient
from schema.sql import queries
from tests.apphelpers import make_app

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
SPO2, HEART_RATE, WEIGHT, GLUCOSE = 4, 1, 8, 11
SPO2_BELOW_90_FOR_5_MIN = uuid.UUID("a1e7a000-0000-4000-8000-000000000001")
SPO2_BELOW_85 = uuid.UUID("a1e7a000-0000-4000-8000-000000000002")


def new_patient(conn: psycopg.Connection) -> uuid.UUID:
    row = conn.execute("INSERT INTO rpm.patients DEFAULT VALUES RETURNING patient_id").fetchone()
    assert row is not None
    patient: uuid.UUID = row[0]
    return patient


def new_rule(
    conn: psycopg.Connection,
    *,
    metric_id: int = WEIGHT,
    kind: str = "above",
    threshold: float | None = 100.0,
    sustained_for: timedelta = timedelta(0),
    missing_after: timedelta | None = None,
    severity: str = "major",
    auto_resolve: bool = True,
) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO rpm.alert_rules (name, metric_id, kind, threshold, sustained_for,"
        " missing_after, severity, auto_resolve)"
        " VALUES ('test rule', %s, %s, %s, %s, %s, %s, %s) RETURNING rule_id",
        (metric_id, kind, threshold, sustained_for, missing_after, severity, auto_resolve),
    ).fetchone()
    assert row is not None
    rule: uuid.UUID = row[0]
    return rule


def readings(
    patient: uuid.UUID,
    points: Sequence[tuple[float, float]],
    *,
    metric_id: int = WEIGHT,
    device: uuid.UUID | None = None,
    start: datetime = T0,
) -> list[ValidatedReading]:
    """(minute, value) points from ``start``."""
    device = device or uuid.uuid5(uuid.NAMESPACE_OID, f"{patient}-{metric_id}")
    return [
        ValidatedReading(start + timedelta(minutes=m), device, patient, metric_id, v, start)
        for m, v in points
    ]


async def _evaluate(db_url: str, batch: list[ValidatedReading]) -> EvaluationResult:
    conn = await asyncpg.connect(db_url)
    try:
        return await AlertEvaluator().evaluate(conn, touched_ranges([batch]))
    finally:
        await conn.close()


def ingest(
    conn: psycopg.Connection, db_url: str, batch: list[ValidatedReading]
) -> EvaluationResult:
    """Store a batch (one ingest transaction), then evaluate it (another), like the worker."""
    store_readings(conn, batch, source="http")
    return asyncio.run(_evaluate(db_url, batch))


def alerts(conn: psycopg.Connection, patient: uuid.UUID) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM rpm.alerts WHERE patient_id = %s ORDER BY first_breach_at, created_at",
            (patient,),
        ).fetchall()


def events(conn: psycopg.Connection, alert_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT actor, from_status, to_status FROM rpm.alert_events"
        " WHERE alert_id = %s ORDER BY event_id",
        (alert_id,),
    ).fetchall()


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def test_default_rules_are_seeded(conn: psycopg.Connection) -> None:
    kinds: dict[str, int] = dict(
        conn.execute(
            "SELECT kind, count(*) FROM rpm.alert_rules WHERE deleted_at IS NULL GROUP BY kind"
        ).fetchall()
    )
    assert kinds["above"] >= 1 and kinds["below"] >= 1 and kinds["missing_data"] >= 1
    spo2 = conn.execute(
        "SELECT metric_id, kind, threshold, sustained_for FROM rpm.alert_rules WHERE rule_id = %s",
        (SPO2_BELOW_90_FOR_5_MIN,),
    ).fetchone()
    assert spo2 == (SPO2, "below", 90.0, timedelta(minutes=5))
    cgm = conn.execute(
        "SELECT missing_after, severity FROM rpm.alert_rules"
        " WHERE metric_id = %s AND kind = 'missing_data' ORDER BY missing_after",
        (GLUCOSE,),
    ).fetchall()
    assert cgm == [(timedelta(minutes=15), "warning"), (timedelta(minutes=30), "major")]


def test_above_threshold_opens_one_alert_and_repeated_breaches_update_it(
    conn: psycopg.Connection, db_url: str
) -> None:
    rule = new_rule(conn, kind="above", threshold=100.0, severity="minor")
    patient = new_patient(conn)
    first = ingest(conn, db_url, readings(patient, [(0, 99.0), (1, 101.0)]))
    assert len(first.opened) == 1
    ingest(conn, db_url, readings(patient, [(2, 120.0), (3, 104.0)]))
    (alert,) = alerts(conn, patient)
    assert alert["rule_id"] == rule
    assert (alert["status"], alert["severity"]) == ("open", "minor")
    assert (alert["first_breach_at"], alert["last_breach_at"]) == (at(1), at(3))
    assert (alert["breach_count"], alert["peak_value"], alert["last_value"]) == (3, 120.0, 104.0)
    assert events(conn, alert["alert_id"]) == [("rpmstore", None, "open")]


def test_exactly_at_the_threshold_is_in_range(conn: psycopg.Connection, db_url: str) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(0, 100.0)]))
    assert alerts(conn, patient) == []


def test_below_threshold_and_auto_resolve_when_back_in_range(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="below", threshold=50.0)
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(0, 49.0), (1, 45.0)]))
    result = ingest(conn, db_url, readings(patient, [(2, 55.0)]))
    assert result.resolved == 1
    (alert,) = alerts(conn, patient)
    assert (alert["status"], alert["resolution"], alert["resolved_by"]) == (
        "resolved",
        "auto",
        "rpmstore",
    )
    assert (alert["peak_value"], alert["breach_count"]) == (45.0, 2)
    assert events(conn, alert["alert_id"]) == [
        ("rpmstore", None, "open"),
        ("rpmstore", "open", "resolved"),
    ]
    # A new breach after resolution is a new alert.
    ingest(conn, db_url, readings(patient, [(3, 40.0)]))
    assert [a["status"] for a in alerts(conn, patient)] == ["resolved", "open"]


def test_rule_without_auto_resolve_stays_open_and_absorbs_later_breaches(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0, auto_resolve=False)
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(0, 110.0), (1, 90.0), (2, 115.0)]))
    (alert,) = alerts(conn, patient)
    assert alert["status"] == "open"
    assert (alert["first_breach_at"], alert["last_breach_at"], alert["breach_count"]) == (
        at(0),
        at(2),
        2,
    )


def test_sustained_breach_fires_only_when_every_reading_of_the_window_breaches(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    # SpO2 < 90 % for 5 minutes (seeded); 88 does not reach the < 85 % rule.
    ingest(conn, db_url, readings(patient, [(m, 88.0) for m in range(5)], metric_id=SPO2))
    assert alerts(conn, patient) == [], "4 minutes covered: not yet sustained"
    ingest(conn, db_url, readings(patient, [(5, 87.0)], metric_id=SPO2))
    (alert,) = alerts(conn, patient)
    assert alert["rule_id"] == SPO2_BELOW_90_FOR_5_MIN
    # The alert starts where the breach started, and counts every breaching reading of it.
    assert (alert["first_breach_at"], alert["last_breach_at"]) == (at(0), at(5))
    assert (alert["breach_count"], alert["peak_value"]) == (6, 87.0)

    other = new_patient(conn)
    broken = [(0, 88.0), (1, 88.0), (2, 88.0), (3, 93.0), (4, 88.0), (5, 88.0), (6, 88.0)]
    ingest(conn, db_url, readings(other, broken, metric_id=SPO2))
    assert alerts(conn, other) == [], "an in-range reading inside the window breaks the run"


def test_overrides_change_thresholds_per_patient_and_the_snapshot_records_them(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient, usual, muted = new_patient(conn), new_patient(conn), new_patient(conn)
    # This patient's SpO2 usually runs low: alert only below 86 %, after 2 minutes.
    conn.execute(
        "INSERT INTO rpm.alert_rule_overrides (rule_id, patient_id, threshold, sustained_for)"
        " VALUES (%s, %s, 86, '2 minutes')",
        (SPO2_BELOW_90_FOR_5_MIN, patient),
    )
    conn.execute(
        "INSERT INTO rpm.alert_rule_overrides (rule_id, patient_id, enabled)"
        " VALUES (%s, %s, false)",
        (SPO2_BELOW_90_FOR_5_MIN, muted),
    )
    low = [(m, 87.0) for m in range(10)]
    for p in (patient, usual, muted):
        ingest(conn, db_url, readings(p, low, metric_id=SPO2))
    assert alerts(conn, patient) == [] and alerts(conn, muted) == []
    assert len(alerts(conn, usual)) == 1
    ingest(conn, db_url, readings(patient, [(m, 85.5) for m in range(10, 13)], metric_id=SPO2))
    (alert,) = alerts(conn, patient)
    snapshot = alert["rule_snapshot"]
    assert (snapshot["threshold"], snapshot["sustained_for"]) == (86.0, "00:02:00")
    assert (snapshot["rule_threshold"], snapshot["rule_sustained_for"]) == (90.0, "00:05:00")
    assert snapshot["override"]["threshold"] == 86.0
    assert alerts(conn, usual)[0]["rule_snapshot"]["override"] is None


def test_snapshot_survives_rule_edits(conn: psycopg.Connection, db_url: str) -> None:
    rule = new_rule(conn, kind="above", threshold=100.0, severity="minor")
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(0, 105.0)]))
    conn.execute(
        "UPDATE rpm.alert_rules SET threshold = 200, severity = 'critical', name = 'edited'"
        " WHERE rule_id = %s",
        (rule,),
    )
    (alert,) = alerts(conn, patient)
    snapshot = alert["rule_snapshot"]
    assert (snapshot["threshold"], snapshot["severity"], snapshot["name"]) == (
        100.0,
        "minor",
        "test rule",
    )
    assert alert["severity"] == "minor"


def test_late_in_range_reading_older_than_the_breach_does_not_resolve_it(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(10, 110.0)]))
    ingest(conn, db_url, readings(patient, [(5, 90.0)]))  # late, older, in range
    (alert,) = alerts(conn, patient)
    assert alert["status"] == "open"
    ingest(conn, db_url, readings(patient, [(11, 90.0)]))  # newer, in range
    assert alerts(conn, patient)[0]["status"] == "resolved"


def test_late_breaching_readings_extend_open_or_record_what_happened(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(0, 90.0), (10, 110.0), (11, 112.0)]))
    # Late breaches of the same run (no in-range reading in between) extend the alert back.
    ingest(conn, db_url, readings(patient, [(8, 130.0), (9, 101.0)]))
    (alert,) = alerts(conn, patient)
    assert (alert["first_breach_at"], alert["last_breach_at"]) == (at(8), at(11))
    assert (alert["breach_count"], alert["peak_value"], alert["last_value"]) == (4, 130.0, 112.0)
    # A late breach inside the alert's span is counted once, however often it is evaluated.
    ingest(conn, db_url, readings(patient, [(10.5, 111.0)]))
    asyncio.run(_evaluate(db_url, readings(patient, [(10.5, 111.0)])))
    assert alerts(conn, patient)[0]["breach_count"] == 5
    # A late breach of an episode that an in-range reading already ended (minute 0 is in
    # range, minute 1 is now too) is recorded as opened and resolved, not left open.
    ingest(conn, db_url, readings(patient, [(-3, 140.0), (-2, 90.0)]))
    history, current = alerts(conn, patient)
    assert (history["status"], history["resolution"]) == ("resolved", "auto")
    assert (history["first_breach_at"], history["peak_value"]) == (at(-3), 140.0)
    assert events(conn, history["alert_id"]) == [
        ("rpmstore", None, "open"),
        ("rpmstore", "open", "resolved"),
    ]
    assert current["status"] == "open"


def test_a_late_reading_that_completes_a_sustained_run_opens_the_alert(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    points = [(m, 88.0) for m in range(8) if m != 3]
    ingest(conn, db_url, readings(patient, [(3, 95.0), *points], metric_id=SPO2)[1:])
    # Minutes 0-2 and 4-7 breach, minute 3 never arrived yet: 0..7 is one run of 7 minutes.
    (alert,) = alerts(conn, patient)
    assert alert["first_breach_at"] == at(0)
    other = new_patient(conn)
    ingest(conn, db_url, readings(other, [(m, 88.0) for m in (4, 5, 6, 7, 8)], metric_id=SPO2))
    assert alerts(conn, other) == [], "4 minutes covered"
    ingest(conn, db_url, readings(other, [(2, 89.0), (3, 88.5)], metric_id=SPO2))  # late
    (late,) = alerts(conn, other)
    assert (late["first_breach_at"], late["last_breach_at"], late["breach_count"]) == (
        at(2),
        at(8),
        7,
    )


def test_evaluating_the_same_range_again_changes_nothing(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patient = new_patient(conn)
    batch = readings(patient, [(0, 101.0), (1, 102.0), (2, 99.0), (3, 103.0)])
    ingest(conn, db_url, batch)
    before = alerts(conn, patient)
    again = asyncio.run(_evaluate(db_url, batch))
    assert again.opened == () and again.resolved == 0
    assert alerts(conn, patient) == before
    assert [a["status"] for a in before] == ["resolved", "open"]


def test_two_concurrent_evaluators_produce_exactly_one_alert(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patients = [new_patient(conn) for _ in range(20)]
    # Each patient's readings come from two devices, committed by two ingest workers.
    first = [r for p in patients for r in readings(p, [(0, 110.0)], device=uuid.uuid4())]
    second = [r for p in patients for r in readings(p, [(0.5, 120.0)], device=uuid.uuid4())]
    store_readings(conn, first, source="http")
    store_readings(conn, second, source="mqtt")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def evaluator(batch: list[ValidatedReading]) -> None:
        async def run() -> None:
            db = await asyncpg.connect(db_url)
            try:
                await db.execute("SELECT 1")  # connected before the race starts
                barrier.wait()
                await AlertEvaluator().evaluate(db, touched_ranges([batch]))
            finally:
                await db.close()

        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=evaluator, args=(b,)) for b in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for p in patients:
        (alert,) = alerts(conn, p)
        assert (alert["breach_count"], alert["peak_value"]) == (2, 120.0)
        assert len(events(conn, alert["alert_id"])) == 1


def test_lifecycle_open_acknowledged_resolved_and_illegal_transitions(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patient = new_patient(conn)
    ingest(conn, db_url, readings(patient, [(0, 110.0)]))
    (alert,) = alerts(conn, patient)
    alert_id = alert["alert_id"]

    async def lifecycle() -> list[str]:
        outcomes: list[str] = []
        async with await psycopg.AsyncConnection.connect(db_url) as db:
            acked = await acknowledge_alert(db, alert_id=alert_id, actor="dr-a", note="calling")
            outcomes.append(f"{acked['from_status']}->{acked['status']}")
            with pytest.raises(IllegalAlertTransitionError):
                await acknowledge_alert(db, alert_id=alert_id, actor="dr-a")
            await db.commit()
            resolved = await resolve_alert(db, alert_id=alert_id, actor="dr-b", note="fine")
            outcomes.append(f"{resolved['from_status']}->{resolved['status']}")
            for transition in (acknowledge_alert, resolve_alert):
                with pytest.raises(IllegalAlertTransitionError):
                    await transition(db, alert_id=alert_id, actor="dr-a")
            with pytest.raises(AlertNotFoundError):
                await resolve_alert(db, alert_id=uuid.uuid4(), actor="dr-a")
            await db.commit()
        return outcomes

    assert asyncio.run(lifecycle()) == ["open->acknowledged", "acknowledged->resolved"]
    (alert,) = alerts(conn, patient)
    assert (alert["acknowledged_by"], alert["ack_note"]) == ("dr-a", "calling")
    assert alert["acknowledged_at"] is not None
    assert (alert["resolved_by"], alert["resolution"]) == ("dr-b", "manual")
    assert events(conn, alert_id) == [
        ("rpmstore", None, "open"),
        ("dr-a", "open", "acknowledged"),
        ("dr-b", "acknowledged", "resolved"),
    ]
    # Readings after a manual resolution open a new alert; an acknowledged alert still
    # auto-resolves when back in range.
    ingest(conn, db_url, readings(patient, [(1, 120.0)]))
    newest = alerts(conn, patient)[-1]
    assert newest["status"] == "open"
    with psycopg.connect(db_url) as db:
        db.execute(
            queries("alert_lifecycle")["ack_alert"],
            {"alert_id": newest["alert_id"], "actor": "dr-a", "note": None},
        )
    ingest(conn, db_url, readings(patient, [(2, 90.0)]))
    assert events(conn, newest["alert_id"])[-1] == ("rpmstore", "acknowledged", "resolved")


def _assign(conn: psycopg.Connection, patient: uuid.UUID, since: datetime) -> None:
    device = conn.execute(
        "INSERT INTO rpm.devices (kind, manufacturer, model, serial_number, credential_sha256)"
        " VALUES ('glucose_meter', 'acme', 'cgm', %s, %s) RETURNING device_id",
        (uuid.uuid4().hex, uuid.uuid4().bytes * 2),
    ).fetchone()
    assert device is not None
    conn.execute(
        "INSERT INTO rpm.device_assignments (device_id, patient_id, valid_during)"
        " VALUES (%s, %s, tstzrange(%s, NULL))",
        (device[0], patient, since),
    )


def _sweep(db_url: str, now: datetime) -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        db = await asyncpg.connect(db_url)
        try:
            result = await sweep_missing_data(db, now)
            return result.opened, result.resolved
        finally:
            await db.close()

    return asyncio.run(run())


def test_missing_data_sweep_opens_once_and_readings_resolve_it(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient, quiet, unassigned = new_patient(conn), new_patient(conn), new_patient(conn)
    for p in (patient, quiet):
        _assign(conn, p, T0 - timedelta(days=1))
    for p in (patient, unassigned):
        ingest(conn, db_url, readings(p, [(0, 110.0)], metric_id=GLUCOSE))
    # quiet never sent glucose: a metric a patient never sent is not expected from them.
    assert _sweep(db_url, at(14)) == (0, 0)
    assert _sweep(db_url, at(20)) == (1, 0)  # 15-minute rule
    assert _sweep(db_url, at(21)) == (0, 0)  # still one open alert
    assert _sweep(db_url, at(31)) == (1, 0)  # 30-minute rule
    opened = alerts(conn, patient)
    assert [(a["severity"], a["first_breach_at"]) for a in opened] == [
        ("warning", at(15)),
        ("major", at(30)),
    ]
    assert opened[0]["rule_snapshot"]["last_reading_at"].startswith("2026-06-01T09:00:00")
    assert alerts(conn, quiet) == [] and alerts(conn, unassigned) == []
    result = ingest(conn, db_url, readings(patient, [(32, 120.0)], metric_id=GLUCOSE))
    assert result.resolved == 2
    assert {a["status"] for a in alerts(conn, patient)} == {"resolved"}


def test_missing_data_override_and_resume_seen_by_the_sweep(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    _assign(conn, patient, T0 - timedelta(days=1))
    rule = new_rule(
        conn,
        metric_id=WEIGHT,
        kind="missing_data",
        threshold=None,
        missing_after=timedelta(hours=24),
    )
    conn.execute(
        "INSERT INTO rpm.alert_rule_overrides (rule_id, patient_id, missing_after)"
        " VALUES (%s, %s, '2 hours')",
        (rule, patient),
    )
    store_readings(conn, readings(patient, [(0, 80.0)]), source="http")
    assert _sweep(db_url, at(119)) == (0, 0)
    assert _sweep(db_url, at(121)) == (1, 0)
    (alert,) = alerts(conn, patient)
    assert alert["rule_snapshot"]["missing_after"] == "02:00:00"
    # A reading stored without its evaluation (say the ingestor died): the sweep resolves.
    store_readings(conn, readings(patient, [(122, 80.0)]), source="http")
    assert _sweep(db_url, at(123)) == (0, 1)


def test_parked_evaluations_are_evaluated_by_the_sweep(
    conn: psycopg.Connection, db_url: str
) -> None:
    new_rule(conn, kind="above", threshold=100.0)
    patient = new_patient(conn)
    store_readings(conn, readings(patient, [(0, 130.0)]), source="http")
    conn.execute(
        "INSERT INTO rpm.alert_pending_evaluations (patient_id, metric_id, range_start,"
        " range_end, last_error) VALUES (%s, %s, %s, %s, 'test')",
        (patient, WEIGHT, at(0), at(0)),
    )
    _sweep(db_url, at(1))
    assert len(alerts(conn, patient)) == 1
    remaining = conn.execute("SELECT count(*) FROM rpm.alert_pending_evaluations").fetchone()
    assert remaining == (0,)


def test_alerts_sweep_command(
    conn: psycopg.Connection,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    patient = new_patient(conn)
    now = datetime.now(UTC)
    _assign(conn, patient, now - timedelta(days=1))
    store_readings(
        conn,
        readings(patient, [(0, 100.0)], metric_id=GLUCOSE, start=now - timedelta(hours=1)),
        source="http",
    )
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MQTT_URL", "mqtt://unused@127.0.0.1:1")
    # No local stack state of any other instance is read.
    monkeypatch.setenv("RPMSTORE_INSTANCE", f"test-{uuid.uuid4().hex[:8]}")
    assert main(["alerts", "sweep"]) == 0
    assert "missing-data alerts opened 2" in capsys.readouterr().out
    assert len(alerts(conn, patient)) == 2


def test_committed_batches_create_alerts_through_the_committer_hook(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    batch = readings(patient, [(0, 80.0), (1, 97.0)], metric_id=SPO2)

    async def run() -> int:
        async with (
            asyncpg.create_pool(db_url, min_size=1, max_size=3) as pool,
            asyncpg.create_pool(db_url, min_size=1, max_size=1) as alert_pool,
        ):
            worker = AlertWorker(alert_pool)
            await worker.start()
            committer = GroupCommitter(
                pool, source="http", alert_outbox=True, post_commit=worker.on_commit
            )
            await committer.start()
            try:
                for r in batch:
                    await committer.submit(
                        IngestRequest([r], [0], (), b"{}", received_at=time.time())
                    )
                await worker.drain()
            finally:
                await committer.stop()
                await worker.stop()
            return worker.evaluations

    assert asyncio.run(run()) >= 1
    (alert,) = alerts(conn, patient)
    # SpO2 80 % breached "below 85 %" and came back in range a minute later.
    assert (alert["rule_id"], alert["status"], alert["peak_value"]) == (
        SPO2_BELOW_85,
        "resolved",
        80.0,
    )


def test_post_readings_through_the_api_creates_the_alert(
    conn: psycopg.Connection, db_url: str, api_db_url: str
) -> None:
    patient = register_patient(conn)
    device = register_device(
        conn, kind="pulse_oximeter", manufacturer="Acme", model="OX-1", serial_number="SN-ALERT"
    )
    now = datetime.now(UTC).replace(microsecond=0)
    assign_device(
        conn, device_id=device.device_id, patient_id=patient, valid_from=now - timedelta(days=1)
    )

    def spo2(minutes_ago: int, value: float) -> dict[str, Any]:
        time = (now - timedelta(minutes=minutes_ago)).isoformat()
        return {"metric": "spo2", "value": value, "unit": "%", "time": time}

    with TestClient(make_app(db_url, api_db_url)) as client:
        for body in (
            {"readings": [spo2(m, 88.0) for m in (6, 5, 4)]},
            {"readings": [spo2(m, 87.0) for m in (3, 2, 1)]},
        ):
            response = client.post(
                "/v1/readings",
                content=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {device.token}"},
            )
            assert response.status_code == 200, response.text
        # Evaluation runs after the answer; wait for it in the app's own event loop.
        assert client.portal is not None
        runtime = client.app.state.ingest  # type: ignore[attr-defined]
        client.portal.call(runtime.alerts.drain)
        metrics = client.get("/metrics").text
    assert 'rpmstore_alerts_changed_total{change="opened"} 1.0' in metrics
    (alert,) = alerts(conn, patient)
    assert alert["rule_id"] == SPO2_BELOW_90_FOR_5_MIN
    assert (alert["status"], alert["breach_count"], alert["peak_value"]) == ("open", 6, 87.0)
    assert alert["first_breach_at"] == now - timedelta(minutes=6)


class _FailingEvaluator(AlertEvaluator):
    """Our own evaluator made to fail (the database stays real): a defect in evaluation."""

    async def evaluate_in_transaction(
        self,
        conn: asyncpg.Connection,
        touched: Any,  # noqa: ARG002 - the signature of the method it replaces
    ) -> EvaluationResult:
        await conn.execute("SELECT 1/0")
        raise AssertionError("unreachable")


def test_failing_evaluation_neither_fails_the_ack_nor_loses_the_evaluation(
    conn: psycopg.Connection, db_url: str
) -> None:
    patient = new_patient(conn)
    batch = readings(patient, [(0, 80.0)], metric_id=SPO2)

    async def run() -> int:
        async with (
            asyncpg.create_pool(db_url, min_size=1, max_size=3) as pool,
            asyncpg.create_pool(db_url, min_size=1, max_size=1) as alert_pool,
        ):
            worker = AlertWorker(
                alert_pool, evaluator=_FailingEvaluator(), max_attempts=2, max_backoff_s=0.01
            )
            await worker.start()
            committer = GroupCommitter(
                pool, source="http", alert_outbox=True, post_commit=worker.on_commit
            )
            await committer.start()
            try:
                outcome = await committer.submit(
                    IngestRequest(batch, [0], (), b"{}", received_at=time.time())
                )
                await worker.drain()
            finally:
                await committer.stop()
                await worker.stop()
            return outcome.stored

    assert asyncio.run(run()) == 1
    assert alerts(conn, patient) == []
    parked = conn.execute(
        "SELECT patient_id, metric_id, range_start, last_error FROM rpm.alert_pending_evaluations"
    ).fetchall()
    assert [(p, m, s) for p, m, s, _ in parked] == [(patient, SPO2, at(0))]
    assert "DivisionByZero" in parked[0][3]
    _sweep(db_url, at(1))
    assert [a["rule_id"] for a in alerts(conn, patient)] == [SPO2_BELOW_85]


@pytest.mark.slow  # many random arrival orders, each evaluated through the outbox
@pytest.mark.parametrize("sustained", [timedelta(0), timedelta(minutes=3)])
def test_any_arrival_order_leaves_alerts_consistent_with_the_readings(
    conn: psycopg.Connection, db_url: str, sustained: timedelta
) -> None:
    new_rule(conn, kind="above", threshold=100.0, sustained_for=sustained)
    rng = random.Random(20261124)
    for _ in range(8):
        patient = new_patient(conn)
        points = [(m, rng.choice((90.0, 110.0, 110.0, 120.0))) for m in range(30)]
        shuffled = points[:]
        rng.shuffle(shuffled)
        for start in range(0, len(shuffled), 4):  # batches of 4 in a random order
            ingest(conn, db_url, readings(patient, shuffled[start : start + 4]))
        found = alerts(conn, patient)
        # In range at the newest reading: nothing open. Breaching for the whole duration: one
        # alert open. (Breaching for less: an alert opened before a late in-range reading split
        # the run stays open until a newer in-range reading; alerts are not retracted.)
        latest_minute, latest_value = points[-1]
        run_start = latest_minute
        while run_start > 0 and points[run_start - 1][1] > 100.0:
            run_start -= 1
        opened = [a["status"] for a in found].count("open")
        if latest_value <= 100.0:
            assert opened == 0, points
        elif latest_minute - run_start >= sustained.total_seconds() / 60:
            assert opened == 1, points
        else:
            assert opened <= 1, points
        # Alerts never overlap, and each covers only breaching readings of its span.
        spans = sorted((a["first_breach_at"], a["last_breach_at"]) for a in found)
        assert all(b[0] > a[1] for a, b in itertools.pairwise(spans)), spans
        for a in found:
            breaching = [
                v for m, v in points if a["first_breach_at"] <= at(m) <= a["last_breach_at"]
            ]
            assert a["breach_count"] == sum(v > 100.0 for v in breaching)


def test_a_late_reading_that_starts_a_run_earlier_opens_its_sustained_alert(
    conn: psycopg.Connection, db_url: str
) -> None:
    """The run's first reading arrives last, and the run then qualifies only at readings more
    than sustained_for after the late one (a gap follows it): found by the fault suite's
    check, which compares incremental evaluation with evaluation from scratch."""
    new_rule(conn, kind="above", threshold=100.0, sustained_for=timedelta(minutes=5))
    points: list[tuple[float, float]] = [(-1, 90.0), (0, 110.0), (4, 110.0)]
    points += [(m / 2, 110.0) for m in range(11, 18)] + [(9, 90.0)]  # 5.5 ... 8.5, then 9
    incremental, from_scratch = new_patient(conn), new_patient(conn)
    for point in [points[0], *points[2:], points[1]]:  # minute 0 arrives last
        ingest(conn, db_url, readings(incremental, [point]))
    ingest(conn, db_url, readings(from_scratch, points))

    def summary(patient: uuid.UUID) -> list[tuple[Any, ...]]:
        return [
            (a["first_breach_at"], a["last_breach_at"], a["breach_count"], a["status"])
            for a in alerts(conn, patient)
        ]

    assert summary(incremental) == summary(from_scratch) == [(at(0), at(8.5), 9, "resolved")]
