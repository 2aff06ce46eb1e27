"""Re-chunk throughput as a ratio against a plain INSERT ... SELECT of the same rows, one run.

The same readings (35 days, 7-day chunks) are rewritten into 1-day chunks three ways, each
into an empty hypertable with the same indexes:

1. baseline: one ``INSERT INTO new SELECT * FROM rpm.readings`` (no batches, no ledger, no
   verification, nothing resumable), measured before and after the others; the faster counts;
2. binary COPY: per source chunk, ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` streamed
   into ``COPY new FROM STDIN (FORMAT BINARY)`` through the client: the alternative batch
   primitive, measured to choose between the two;
3. ``Rechunker.rechunk``: the real thing, end to end (prepare, TID-range INSERT ... SELECT
   batches with their ledger rows, verification with checksums and lineage, reconciliation,
   cutover); its copy phase is reported apart.

Also measured: what the dual-write trigger costs writers of the live table during a run
(100,000 readings in 5,000-row INSERT ... SELECT transactions, without and with the trigger).

Results go to reports/bench-rechunk.json and stdout.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from jobs.rechunk import Options, Rechunker
from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.benchmark

ROWS = int(os.environ.get("RPMSTORE_BENCH_RECHUNK_ROWS", "500000"))
BATCH_ROWS = int(os.environ.get("RPMSTORE_BENCH_RECHUNK_BATCH", "50000"))
REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench-rechunk.json"
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=36)


def seed(conn: psycopg.Connection) -> None:
    step_s = 35 * 24 * 3600 / ROWS
    conn.execute(
        """
        INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id,
                                  patient_id, metric_id, utc_offset_minutes, client_reading_id)
        SELECT %(start)s + (i * %(step)s) * interval '1 second', now(), 60 + i %% 40, 1,
               md5('device' || i %% 100)::uuid, md5('patient' || i %% 100)::uuid,
               1 + i %% 3, 60, CASE WHEN i %% 5 = 0 THEN 'r-' || i END
        FROM generate_series(0, %(rows)s - 1) i
        """,
        {"start": START, "step": step_s, "rows": ROWS},
    )
    conn.execute("VACUUM ANALYZE rpm.readings")


def empty_copy(conn: psycopg.Connection, name: str) -> sql.Identifier:
    """An empty hypertable shaped like rpm.readings (same columns and indexes), 1-day chunks."""
    table = sql.Identifier("rpm", name)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE rpm.readings INCLUDING ALL)").format(table))
    conn.execute(
        "SELECT create_hypertable(%s::regclass, by_range('measured_at', interval '1 day'))",
        (f"rpm.{name}",),
    )
    return table


def count(conn: psycopg.Connection, table: sql.Identifier) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


def plain_insert_select(conn: psycopg.Connection) -> float:
    table = empty_copy(conn, "bench_plain")
    started = time.perf_counter()
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM rpm.readings").format(table))
    elapsed = time.perf_counter() - started
    assert count(conn, table) == ROWS
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return elapsed


def binary_copy(url: str) -> float:
    with (
        psycopg.connect(url, autocommit=True) as reader,
        psycopg.connect(url, autocommit=True) as writer,
    ):
        table = empty_copy(writer, "bench_copy")
        chunks = [r[0] for r in reader.execute("SELECT show_chunks('rpm.readings')::text")]
        started = time.perf_counter()
        for chunk in chunks:
            with (
                writer.transaction(),
                reader.cursor().copy(
                    sql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT BINARY)").format(
                        sql.SQL(chunk)  # show_chunks output: a quoted, qualified name
                    )
                ) as out,
                writer.cursor().copy(
                    sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(table)
                ) as into,
            ):
                for data in out:
                    into.write(data)
        elapsed = time.perf_counter() - started
        assert count(writer, table) == ROWS
        writer.execute(sql.SQL("DROP TABLE {}").format(table))
    return elapsed


WRITE_ROWS = 100_000


def write_readings(conn: psycopg.Connection, offset_s: int) -> float:
    """Seconds to store WRITE_ROWS new readings (5,000 per transaction, like ingest batches)."""
    started = time.perf_counter()
    for first in range(0, WRITE_ROWS, 5_000):
        conn.execute(
            """
            INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id,
                                      patient_id, metric_id)
            SELECT %(start)s + (%(offset)s + i) * interval '1 second', now(), 70, 2,
                   md5('writer' || i %% 50)::uuid, md5('writer-patient' || i %% 50)::uuid, 1
            FROM generate_series(%(first)s, %(first)s + 4999) i
            """,
            {"start": START, "offset": offset_s, "first": first},
        )
    return time.perf_counter() - started


def dual_write_cost(url: str) -> dict[str, float]:
    """Ingest-like writes into the live table without, then with, the dual-write trigger."""
    with psycopg.connect(url, autocommit=True) as conn:
        without = write_readings(conn, offset_s=0)
        Rechunker(conn, options=Options(cutover=False)).rechunk(
            "rpm", "readings", chunk_interval="1 day"
        )
        during = write_readings(conn, offset_s=WRITE_ROWS)
        return {"without_trigger": WRITE_ROWS / without, "with_dual_write": WRITE_ROWS / during}


def test_rechunk_ratio_to_plain_insert_select(
    database_factory: DatabaseFactory, migrated_template: str
) -> None:
    url = database_factory.clone(migrated_template)
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn)
        seconds = {"insert_select": plain_insert_select(conn)}
    seconds["binary_copy"] = binary_copy(url)
    with psycopg.connect(url, autocommit=True) as conn:
        rechunker = Rechunker(conn, options=Options(batch_rows=BATCH_ROWS))
        report = rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
        assert report.state == "cut_over"
        assert count(conn, sql.Identifier("rpm", "readings")) == ROWS
        assert all(d.difference == 0 for d in report.reconciliation)
        rechunker.finalize("rpm", "readings")
        # The baseline again, after: the faster of the two counts (the first one runs on a
        # freshly loaded table, and this machine is shared), so the ratio is not flattered.
        second_baseline = plain_insert_select(conn)
    baselines = [seconds["insert_select"], second_baseline]
    seconds["insert_select"] = min(baselines)
    seconds["rechunk_copy_phase"] = report.seconds["copy"]
    seconds["rechunk_end_to_end"] = report.seconds["total"]

    writes = dual_write_cost(database_factory.clone(migrated_template))
    rows_per_s = {k: ROWS / v for k, v in seconds.items()}
    baseline = rows_per_s["insert_select"]
    result = {
        "rows": ROWS,
        "batch_rows": BATCH_ROWS,
        "batches": report.batches,
        "source_chunks": report.chunks,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "insert_select_runs_s": [round(b, 2) for b in baselines],
        "rechunk_phases_s": {k: round(v, 2) for k, v in report.seconds.items()},
        "rows_per_s": {k: round(v) for k, v in rows_per_s.items()},
        "ratio_to_insert_select": {k: round(v / baseline, 3) for k, v in rows_per_s.items()},
        "ingest_during_run": {
            "rows_per_s": {k: round(v) for k, v in writes.items()},
            "ratio": round(writes["with_dual_write"] / writes["without_trigger"], 3),
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| path | rows/s | ÷ INSERT ... SELECT |\n|---|---:|---:|")  # noqa: T201
    for path in seconds:
        print(f"| {path} | {rows_per_s[path]:,.0f} | {rows_per_s[path] / baseline:.2f} |")  # noqa: T201
    ratio = result["ingest_during_run"]["ratio"]  # type: ignore[index]
    print(f"writes to the live table during a run (dual write) ÷ before: {ratio}")  # noqa: T201
