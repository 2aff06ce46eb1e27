"""Schema v1 properties that later work relies on, checked on a real TimescaleDB."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from ingest.store import ValidatedReading, store_readings

AT = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def _reading(value: float, *, device: uuid.UUID, metric_id: int = 1) -> ValidatedReading:
    return ValidatedReading(AT, device, uuid.uuid4(), metric_id, value, received_at=AT)


def test_readings_is_a_hypertable_on_measurement_time(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT h.hypertable_schema, h.hypertable_name, d.column_name "
        "FROM timescaledb_information.hypertables h "
        "JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name) "
        "WHERE h.hypertable_name = 'readings'"
    ).fetchall()
    # (The Apache edition's rollup tables are hypertables too: see test_rollups.)
    assert rows == [("rpm", "readings", "measured_at")]


def test_natural_key_rejects_a_second_row_for_the_same_instant(conn: psycopg.Connection) -> None:
    device = uuid.uuid4()
    store_readings(conn, [_reading(71.0, device=device)], source="import")
    with pytest.raises(psycopg.errors.UniqueViolation, match="readings_natural_key"):
        store_readings(conn, [_reading(72.0, device=device)], source="import")
    # The failed batch rolled back whole, its ingest_batches row included.
    assert conn.execute("SELECT count(*) FROM rpm.ingest_batches").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM rpm.readings").fetchone() == (1,)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(conn: psycopg.Connection, value: float) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="readings_value_finite"):
        store_readings(conn, [_reading(value, device=uuid.uuid4())], source="import")


def test_every_reading_row_points_at_its_ingest_batch(conn: psycopg.Connection) -> None:
    device = uuid.uuid4()
    batch_id = store_readings(
        conn, [_reading(97.0, device=device, metric_id=m) for m in (1, 4)], source="mqtt"
    )
    batch = conn.execute(
        "SELECT source, row_count FROM rpm.ingest_batches WHERE batch_id = %s", (batch_id,)
    ).fetchone()
    assert batch == ("mqtt", 2)
    assert conn.execute(
        "SELECT count(*) FROM rpm.readings WHERE batch_id = %s", (batch_id,)
    ).fetchone() == (2,)


def test_audit_log_is_append_only(conn: psycopg.Connection) -> None:
    """The database itself refuses UPDATE, DELETE and TRUNCATE, even for the table's owner."""
    conn.execute(
        "INSERT INTO rpm.audit_log (actor_subject, actor_role, action, route, outcome) "
        "VALUES ('dr-who', 'clinician', 'read', '/v1/patients', 'success')"
    )
    for statement in (
        "UPDATE rpm.audit_log SET outcome = 'denied'",
        "DELETE FROM rpm.audit_log",
        "TRUNCATE rpm.audit_log",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
    assert conn.execute("SELECT outcome FROM rpm.audit_log").fetchall() == [("success",)]


def test_metric_catalogue_converts_every_alternative_unit(conn: psycopg.Connection) -> None:
    """Each metric has its canonical unit at scale 1, and [degF] maps 98.6 to 37 Cel."""
    missing = conn.execute(
        "SELECT m.code FROM rpm.metrics m LEFT JOIN rpm.unit_conversions c "
        "ON c.metric_id = m.metric_id AND c.unit = m.canonical_unit "
        "AND c.scale = 1 AND c.shift = 0 WHERE c.metric_id IS NULL"
    ).fetchall()
    assert missing == []
    row = conn.execute(
        "SELECT 98.6 * scale + shift FROM rpm.unit_conversions c "
        "JOIN rpm.metrics m USING (metric_id) WHERE m.code = 'body_temperature' "
        "AND c.unit = '[degF]'"
    ).fetchone()
    assert row is not None
    assert row[0] == pytest.approx(37.0)
