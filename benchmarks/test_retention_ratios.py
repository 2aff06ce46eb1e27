"""Retention speed as ratios measured in one run (reports/bench-retention.json).

1. ``DELETE`` time ÷ ``drop_chunks`` time for the same range: two clones of one database with
   the same rows; one deletes the due range row by row, the other drops its chunks.
2. Ingest p99 during ``retention run`` ÷ ingest p99 before it: the group committer writes
   recent readings one request at a time (100 readings each, answered after COMMIT); first
   alone, then while ``rpmstore retention run`` (a separate process) archives, verifies and
   drops the old weeks.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psycopg
import pytest

from ingest.committer import GroupCommitter, IngestRequest
from ingest.store import ValidatedReading
from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.benchmark

ROWS_PER_WEEK = int(os.environ.get("RPMSTORE_BENCH_RETENTION_ROWS_PER_WEEK", "100000"))
WEEKS = int(os.environ.get("RPMSTORE_BENCH_RETENTION_WEEKS", "4"))
BASELINE_REQUESTS = 300
MAX_REQUESTS_DURING = 5000  # bounded, whatever the run's duration
REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench-retention.json"
AS_OF = datetime(2026, 11, 2, tzinfo=UTC)
OLD_START = datetime(2026, 4, 30, tzinfo=UTC)  # a chunk boundary (7-day chunks from the epoch)


def fill(url: str) -> tuple[datetime, datetime]:
    """WEEKS whole old chunks of readings; returns their exact range."""
    end = OLD_START + timedelta(weeks=WEEKS)
    step = timedelta(weeks=WEEKS) / (ROWS_PER_WEEK * WEEKS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, "
            "patient_id, metric_id) "
            "SELECT %s + g * %s, %s + g * %s, 60 + g %% 40, 1, "
            "('00000000-0000-0000-0000-' || lpad((g %% 50)::text, 12, '0'))::uuid, "
            "'11111111-1111-1111-1111-111111111111', 1 + g %% 7 "
            "FROM generate_series(0, %s - 1) AS g",
            (OLD_START, step, OLD_START, step, ROWS_PER_WEEK * WEEKS),
        )
        conn.execute(
            "INSERT INTO rpm.patients (patient_id) VALUES ('11111111-1111-1111-1111-111111111111')"
        )
        conn.execute("VACUUM ANALYZE rpm.readings")
        # As if the rollup refresher had run: retention waits for it (see README).
        conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = %s", (AS_OF,))
        conn.execute("UPDATE rpm.rollup_progress SET materialized_until = %s", (AS_OF,))
    return OLD_START, end


def timed(url: str, statement: str, params: tuple[object, ...]) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(statement, params)
        return time.perf_counter() - started


async def ingest_latencies(
    url: str, requests: int, stop: threading.Event | None, offset: int
) -> list[float]:
    device, patient = uuid.uuid4(), uuid.uuid4()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    latencies: list[float] = []
    async with asyncpg.create_pool(url, min_size=1, max_size=4) as pool:
        committer = GroupCommitter(pool, source="http")
        await committer.start()
        try:
            for n in range(requests):
                if stop is not None and stop.is_set():
                    break
                readings = [
                    ValidatedReading(at, device, patient, 1, 70.0, received_at=at)
                    for i in range(100)
                    for at in [base + timedelta(seconds=(offset + n) * 100 + i)]
                ]
                started = time.perf_counter()
                await committer.submit(
                    IngestRequest(readings, list(range(100)), (), b"{}", time.time())
                )
                latencies.append(time.perf_counter() - started)
        finally:
            await committer.stop()
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_retention_ratios(
    database_factory: DatabaseFactory, migrated_template: str, tmp_path: Path
) -> None:
    # 1. DELETE vs drop_chunks on the same rows.
    delete_url = database_factory.clone(migrated_template)
    drop_url = database_factory.clone(migrated_template)
    start, end = fill(delete_url)
    fill(drop_url)
    delete_s = timed(
        delete_url,
        "DELETE FROM rpm.readings WHERE measured_at >= %s AND measured_at < %s",
        (start, end),
    )
    drop_s = timed(
        drop_url,
        "SELECT drop_chunks('rpm.readings', older_than => %s::timestamptz, "
        "newer_than => %s::timestamptz)",
        (end, start),
    )

    # 2. Ingest latency before and during a retention run.
    run_url = database_factory.clone(migrated_template)
    fill(run_url)
    baseline = asyncio.run(ingest_latencies(run_url, BASELINE_REQUESTS, None, 0))
    stop = threading.Event()
    during: list[float] = []

    def ingest() -> None:
        during.extend(asyncio.run(ingest_latencies(run_url, MAX_REQUESTS_DURING, stop, 10**6)))

    writer = threading.Thread(target=ingest)
    writer.start()
    time.sleep(0.5)  # let ingest reach its steady state before the run starts
    # The run is its own process, as in production: it shares the cores, not the interpreter.
    env = {
        **os.environ,
        "DATABASE_URL": run_url,
        "MQTT_URL": "mqtt://unused@127.0.0.1:1",
        "RPMSTORE_INSTANCE": f"bench-{uuid.uuid4().hex[:8]}",
        "RPMSTORE_LOG_LEVEL": "WARNING",
    }
    run_started = time.perf_counter()
    command = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpmstore.cli",
            "retention",
            "run",
            "--as-of",
            AS_OF.isoformat(),
            "--archive-url",
            str(tmp_path / "archive"),
            "--operator",
            "bench",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    run_s = time.perf_counter() - run_started
    stop.set()
    writer.join(timeout=300)
    assert command.returncode == 0, command.stdout + command.stderr
    with psycopg.connect(run_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT outcome, rows_archived, rows_dropped FROM rpm.retention_runs"
        ).fetchone()
    assert row == ("succeeded", ROWS_PER_WEEK * WEEKS, ROWS_PER_WEEK * WEEKS)

    report = {
        "rows": ROWS_PER_WEEK * WEEKS,
        "chunks": WEEKS,
        "delete_s": round(delete_s, 3),
        "drop_chunks_s": round(drop_s, 4),
        "delete_over_drop_chunks": round(delete_s / drop_s, 1),
        "retention_run_s": round(run_s, 2),
        "retention_rows_per_s": round(ROWS_PER_WEEK * WEEKS / run_s),
        "ingest_requests": {"baseline": len(baseline), "during_run": len(during)},
        "ingest_p50_ms": {
            "baseline": round(statistics.median(baseline) * 1000, 2),
            "during_run": round(statistics.median(during) * 1000, 2),
        },
        "ingest_p99_ms": {
            "baseline": round(p99(baseline) * 1000, 2),
            "during_run": round(p99(during) * 1000, 2),
        },
        "ingest_p99_during_over_baseline": round(p99(during) / p99(baseline), 2),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + json.dumps(report, indent=2))  # noqa: T201 - the benchmark's report
