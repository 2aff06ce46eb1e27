"""Readings for retention tests: old weeks that are due, recent ones that are not."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from schema.edition import detect_edition

# Retention tests measure horizons from this instant (RetentionOptions.as_of), so which chunks
# are due does not depend on the day the suite runs.
AS_OF = datetime(2026, 11, 2, tzinfo=UTC)
# 90-day raw horizon: 2026-08-04. Whole 7-day chunks before it are due.
OLD = datetime(2026, 5, 4, tzinfo=UTC)  # a Monday, 26 weeks before AS_OF
RECENT = AS_OF - timedelta(days=20)

READING_COLUMNS = (
    "measured_at, received_at, value, batch_id, device_id, patient_id, metric_id, "
    "utc_offset_minutes, client_reading_id"
)
STORED_ROWS = (
    f"SELECT {READING_COLUMNS} FROM rpm.readings ORDER BY device_id, metric_id, measured_at"
)


def new_patient(conn: psycopg.Connection) -> uuid.UUID:
    row = conn.execute("INSERT INTO rpm.patients DEFAULT VALUES RETURNING patient_id").fetchone()
    assert row is not None
    patient: uuid.UUID = row[0]
    return patient


def insert_readings(
    conn: psycopg.Connection,
    *,
    patient: uuid.UUID,
    start: datetime,
    count: int,
    step: timedelta = timedelta(minutes=10),
    metric_ids: Sequence[int] = (1, 4),
    device: uuid.UUID | None = None,
) -> int:
    """``count`` instants from ``start``, one reading per metric each; returns rows written."""
    device = device or uuid.uuid4()
    rows = [
        (
            start + i * step,
            start + i * step,
            60.0 + (i % 40) + m / 10,
            1,
            device,
            patient,
            m,
            60 if i % 2 else None,
            f"r-{i}-{m}" if i % 3 else None,
        )
        for i in range(count)
        for m in metric_ids
    ]
    with conn.cursor().copy(f"COPY rpm.readings ({READING_COLUMNS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return len(rows)


def count_between(conn: psycopg.Connection, start: datetime, end: datetime) -> int:
    row = conn.execute(
        "SELECT count(*) FROM rpm.readings WHERE measured_at >= %s AND measured_at < %s",
        (start, end),
    ).fetchone()
    assert row is not None
    return int(row[0])


def chunk_ranges(conn: psycopg.Connection) -> list[tuple[datetime, datetime]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT range_start, range_end FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = 'rpm' AND hypertable_name = 'readings' ORDER BY 1"
        )
    ]


ROLLUP_LEVELS = ("1m", "1h", "1d")  # finest first: each level is built from the one below


def continuous_aggregates(conn: psycopg.Connection) -> bool:
    """True on the TSL edition, where the rollups are continuous aggregates."""
    return detect_edition(conn).continuous_aggregates


def materialize_rollups(conn: psycopg.Connection, until: datetime) -> None:
    """Materialize the rollups of every raw reading before ``until``, on either edition.

    TSL: refresh the continuous aggregates 1m, 1h, 1d in that order (each reads the one below),
    from the beginning of time; the procedure commits on its own, so ``conn`` must be in
    autocommit mode. Apache: record the rollups as complete up to ``until``, as the refresher
    does once it has run (the real refresher over months of test data would take most of a
    test's time, and it never reaches before its raw horizon, while these readings are months
    old).
    """
    if continuous_aggregates(conn):
        if not conn.autocommit:
            raise ValueError("refresh_continuous_aggregate cannot run inside a transaction")
        # From the first UTC day that still has raw readings, like the refresher, which never
        # reaches before its raw horizon: a refresh over dropped chunks would recompute their
        # buckets from nothing and erase them.
        row = conn.execute(
            "SELECT time_bucket(INTERVAL '1 day', min(measured_at)) FROM rpm.readings"
        ).fetchone()
        start = row[0] if row else None
        if start is None or start >= until:
            return
        for level in ROLLUP_LEVELS:
            conn.execute(
                "CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz)",
                (f"rpm.readings_{level}", start, until),
            )
        return
    conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = %s", (until,))
    conn.execute("UPDATE rpm.rollup_progress SET materialized_until = %s", (until,))


def leave_rollups_unmaterialized(conn: psycopg.Connection) -> None:
    """The state before the first refresh: nothing rolled up, on either edition.

    TSL: a fresh test database's continuous aggregates have materialized nothing, and
    TimescaleDB cannot move a watermark back, so this checks that state instead of making it.
    """
    if continuous_aggregates(conn):
        marks = conn.execute(
            "SELECT c.user_view_name, _timescaledb_functions.cagg_watermark(c.mat_hypertable_id) "
            "> _timescaledb_functions.to_unix_microseconds('0001-01-01 00:00+00') "
            "FROM _timescaledb_catalog.continuous_agg c WHERE c.user_view_schema = 'rpm'"
        ).fetchall()
        assert len(marks) == len(ROLLUP_LEVELS), marks
        assert not any(materialized for _, materialized in marks), marks
        return
    conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = '-infinity'")
    conn.execute("UPDATE rpm.rollup_progress SET materialized_until = '-infinity'")


def rollup_1m_target(conn: psycopg.Connection) -> tuple[str, str]:
    """The 1-minute rollups as a retention target: rpm.readings_1m (continuous aggregate, TSL)
    or rpm.rollup_1m (rpmstore's rollup table, Apache)."""
    return ("rpm", "readings_1m") if continuous_aggregates(conn) else ("rpm", "rollup_1m")


def rollup_1m_storage(conn: psycopg.Connection) -> sql.Identifier:
    """Where the 1-minute rollups' rows are stored (an aggregate's materialization table)."""
    if not continuous_aggregates(conn):
        return sql.Identifier("rpm", "rollup_1m")
    row = conn.execute(
        "SELECT materialization_hypertable_schema, materialization_hypertable_name "
        "FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = 'rpm' AND view_name = 'readings_1m'"
    ).fetchone()
    assert row is not None
    return sql.Identifier(str(row[0]), str(row[1]))


def missing_rollup_targets(conn: psycopg.Connection) -> tuple[str, str]:
    """(1m, 1h) rollup policy targets of the other edition and why retention skips them."""
    if continuous_aggregates(conn):
        return (
            "rpm.rollup_1m: does not exist in this database",
            "rpm.rollup_1h: does not exist in this database",
        )
    return (
        "rpm.readings_1m: not a hypertable or continuous aggregate",
        "rpm.readings_1h: not a hypertable or continuous aggregate",
    )
