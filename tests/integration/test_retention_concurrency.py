"""Retention while ingest runs: drops do not lose or block readings; lock waits back off."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import psycopg

from ingest.committer import GroupCommitter, IngestRequest
from ingest.store import ValidatedReading
from retention.run import RetentionOptions, RunResult, run_retention
from rpmstore.localstack.debian_root import DebianRoot
from tests.conftest import PgServer
from tests.integration.retention_data import (
    AS_OF,
    OLD,
    READING_COLUMNS,
    STORED_ROWS,
    chunk_ranges,
    count_between,
    insert_readings,
    materialize_rollups,
    new_patient,
)
from tests.integration.test_retention import amcheck_clean

HORIZON = AS_OF - timedelta(days=90)
MAX_BATCHES = 400  # per writer: the loops are bounded whatever happens


def _kept_boundary(conn: psycopg.Connection) -> datetime:
    """Start of the oldest chunk that is not due: ingest writes right across from the drops."""
    return min(start for start, end in chunk_ranges(conn) if end > HORIZON)


def _committer_writer(
    db_url: str, patient: uuid.UUID, start: datetime, stop: threading.Event, sent: list[int]
) -> None:
    """The real ingest path (group committer, binary COPY, dedup merge) in its own loop."""
    device = uuid.uuid4()

    async def main() -> None:
        async with asyncpg.create_pool(db_url, min_size=1, max_size=3) as pool:
            committer = GroupCommitter(pool, source="http", max_delay_s=0.002)
            await committer.start()
            try:
                for batch in range(MAX_BATCHES):
                    if stop.is_set() and batch >= 20:
                        break
                    readings = [
                        ValidatedReading(at, device, patient, 1, 70.0, received_at=at)
                        for i in range(50)
                        for at in [start + timedelta(seconds=batch * 50 + i)]
                    ]
                    outcome = await committer.submit(
                        IngestRequest(
                            readings=readings,
                            reading_indexes=list(range(len(readings))),
                            quarantine=(),
                            raw_payload=b"{}",
                            received_at=time.time(),
                        )
                    )
                    sent[0] += len(readings)
                    assert outcome.stored == len(readings)
            finally:
                await committer.stop()

    asyncio.run(main())


def _copy_writer(
    db_url: str, patient: uuid.UUID, start: datetime, stop: threading.Event, sent: list[int]
) -> None:
    """Plain COPY transactions into the chunk next to the ones being dropped."""
    device = uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as conn:
        for batch in range(MAX_BATCHES):
            if stop.is_set() and batch >= 20:
                break
            with (
                conn.transaction(),
                conn.cursor().copy(f"COPY rpm.readings ({READING_COLUMNS}) FROM STDIN") as copy,
            ):
                for i in range(100):
                    at = start + timedelta(milliseconds=batch * 100 + i)
                    copy.write_row((at, at, 97.0, 1, device, patient, 4, None, None))
            sent[0] += 100


def test_ingest_across_the_boundary_during_drops_loses_nothing(
    db_url: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    pg_server: PgServer,
    debian_root: DebianRoot,
) -> None:
    patient = new_patient(conn)
    insert_readings(conn, patient=patient, start=OLD, count=6000, step=timedelta(minutes=20))
    materialize_rollups(conn, AS_OF)
    insert_readings(conn, patient=patient, start=HORIZON, count=1)  # the chunk that stays
    boundary = _kept_boundary(conn)
    due_rows = count_between(conn, OLD - timedelta(days=7), boundary)
    kept_before = count_between(conn, boundary, boundary + timedelta(days=7))
    stop = threading.Event()
    sent_committer, sent_copy = [0], [0]
    failures: list[BaseException] = []

    def guarded(target: object, *args: object) -> threading.Thread:
        def body() -> None:
            try:
                target(*args)  # type: ignore[operator]
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    writers = [
        guarded(_committer_writer, db_url, patient, boundary, stop, sent_committer),
        guarded(_copy_writer, db_url, patient, boundary + timedelta(hours=1), stop, sent_copy),
    ]
    try:
        # A short lock timeout makes the drops give way to ingest and retry.
        result = run_retention(
            conn, RetentionOptions(str(tmp_path), "dr-ops", lock_timeout_ms=50, as_of=AS_OF)
        )
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=120)
    assert not failures, failures
    assert result.outcome == "succeeded", result.detail
    assert result.rows_dropped == due_rows > 0
    assert count_between(conn, OLD - timedelta(days=7), boundary) == 0
    stored = count_between(conn, boundary, boundary + timedelta(days=7))
    assert stored - kept_before == sent_committer[0] + sent_copy[0] > 0, "sent = stored"
    amcheck_clean(pg_server, debian_root, db_url)


def test_a_drop_that_cannot_get_its_lock_backs_off_and_leaves_the_data(
    db_url: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    pg_server: PgServer,
    debian_root: DebianRoot,
) -> None:
    """A long reader of a due chunk: the drop times out, retries, then gives up and says why."""
    patient = new_patient(conn)
    insert_readings(conn, patient=patient, start=OLD, count=500)
    materialize_rollups(conn, AS_OF)
    before = conn.execute(STORED_ROWS).fetchall()
    with psycopg.connect(db_url) as reader:  # not autocommit: its snapshot holds the lock
        reader.execute("SELECT count(*) FROM rpm.readings WHERE measured_at < %s", (HORIZON,))
        result = run_retention(
            conn,
            RetentionOptions(
                str(tmp_path), "dr-ops", lock_timeout_ms=20, max_attempts=3, as_of=AS_OF
            ),
        )
        reader.rollback()
    assert result.outcome == "failed"
    assert all(s.status == "failed" for s in result.slices)
    assert all("LockNotAvailable" in (s.reason or "") for s in result.slices)
    assert conn.execute(STORED_ROWS).fetchall() == before
    reasons = conn.execute(
        "SELECT status, reason FROM rpm.retention_ledger WHERE run_id = %s", (result.run_id,)
    ).fetchall()
    assert reasons and all(s == "failed" and "data left in place" in r for s, r in reasons)
    # With the reader gone the same slices go; the earlier archives are simply superseded.
    retry = run_retention(conn, RetentionOptions(str(tmp_path), "dr-ops", as_of=AS_OF))
    assert retry.outcome == "succeeded"
    assert count_between(conn, OLD - timedelta(days=7), HORIZON) == 0
    amcheck_clean(pg_server, debian_root, db_url)


def test_a_deadlock_during_a_drop_is_retried(
    db_url: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    """A reader of the chunk that then places a hold closes a lock cycle with the drop.

    The drop holds rpm.legal_holds (SHARE) and waits for the chunk the reader holds; the
    reader's INSERT into rpm.legal_holds waits for the drop. PostgreSQL aborts the drop
    (40P01, it waited first so its deadlock check runs first); it is retried and succeeds.
    """
    patient, other = new_patient(conn), new_patient(conn)
    insert_readings(conn, patient=patient, start=OLD, count=300)
    materialize_rollups(conn, AS_OF)
    before_due = count_between(conn, OLD - timedelta(days=7), HORIZON)
    results: list[object] = []

    def retention() -> None:
        with psycopg.connect(
            db_url, autocommit=True, application_name="retention-deadlock-test"
        ) as own:
            results.append(
                run_retention(
                    own,
                    RetentionOptions(str(tmp_path), "dr-ops", lock_timeout_ms=30_000, as_of=AS_OF),
                )
            )

    with psycopg.connect(db_url) as reader:
        reader.execute("SELECT count(*) FROM rpm.readings WHERE measured_at < %s", (HORIZON,))
        runner = threading.Thread(target=retention)
        runner.start()
        for _ in range(1200):  # bounded: the run reaches its drop within seconds
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'retention-deadlock-test' AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0]:
                break
            time.sleep(0.05)
        reader.execute(
            "INSERT INTO rpm.legal_holds (patient_id, reason, placed_by) VALUES (%s, 'x', 'y')",
            (other,),
        )
        reader.commit()
    runner.join(timeout=300)
    (result,) = results
    assert isinstance(result, RunResult)
    assert result.outcome == "succeeded", result.detail
    assert max(s.attempts for s in result.slices) >= 2, "the deadlocked drop was retried"
    assert result.rows_dropped == before_due
    assert count_between(conn, OLD - timedelta(days=7), HORIZON) == 0
