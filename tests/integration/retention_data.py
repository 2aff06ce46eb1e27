"""Readings for retention tests: old weeks that are due, recent ones that are not."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg

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


def mark_rollups_complete(conn: psycopg.Connection, until: datetime) -> None:
    """Record rollups as complete up to ``until``, as the refresher does once it has run (the
    real refresher over months of test data would take most of a test's time)."""
    conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = %s", (until,))
    conn.execute("UPDATE rpm.rollup_progress SET materialized_until = %s", (until,))
