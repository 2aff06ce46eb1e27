"""The group committer against a real TimescaleDB: exactly-once storage, conflicts, lineage."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg
import psycopg
import pytest

from ingest.committer import (
    BufferFullError,
    GroupCommitter,
    IngestOutcome,
    IngestRequest,
    QuarantineEntry,
    UnsafeDatabaseSettingsError,
)
from ingest.store import ValidatedReading

T = TypeVar("T")
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PATIENT = uuid.uuid4()


def reading(device: uuid.UUID, minute: int, value: float, metric_id: int = 1) -> ValidatedReading:
    at = T0 + timedelta(minutes=minute)
    return ValidatedReading(at, device, PATIENT, metric_id, value, received_at=at)


def request(
    readings: list[ValidatedReading], quarantine: tuple[QuarantineEntry, ...] = ()
) -> IngestRequest:
    return IngestRequest(
        readings=readings,
        reading_indexes=list(range(len(readings))),
        quarantine=quarantine,
        raw_payload=b'{"raw": "payload"}',
        received_at=time.time(),
        claimed_device="claimed",
    )


def run_with_committer(
    db_url: str,
    body: Callable[[GroupCommitter], Awaitable[T]],
    **options: float,
) -> T:
    async def main() -> T:
        async with asyncpg.create_pool(db_url, min_size=1, max_size=4) as pool:
            committer = GroupCommitter(pool, source="http", **options)  # type: ignore[arg-type]
            await committer.start()
            try:
                return await body(committer)
            finally:
                await committer.stop()

    return asyncio.run(main())


def count(conn: psycopg.Connection, table: str) -> int:
    query = psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier("rpm", table))
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_readings_are_stored_once_and_retries_count_as_duplicates(
    db_url: str, conn: psycopg.Connection
) -> None:
    device = uuid.uuid4()
    batch = [reading(device, m, 70.0 + m) for m in range(10)]

    async def body(committer: GroupCommitter) -> tuple[IngestOutcome, IngestOutcome]:
        first = await committer.submit(request(batch))
        retry = await committer.submit(request(batch))
        return first, retry

    first, retry = run_with_committer(db_url, body)
    assert (first.stored, first.duplicates, first.conflicts) == (10, 0, ())
    assert (retry.stored, retry.duplicates, retry.conflicts) == (0, 10, ())
    assert count(conn, "readings") == 10
    batches = conn.execute(
        "SELECT row_count, duplicate_count FROM rpm.ingest_batches ORDER BY batch_id"
    ).fetchall()
    assert batches == [(10, 0), (0, 10)]


def test_same_key_with_a_different_value_is_quarantined_as_a_conflict(
    db_url: str, conn: psycopg.Connection
) -> None:
    device = uuid.uuid4()

    async def body(committer: GroupCommitter) -> IngestOutcome:
        await committer.submit(request([reading(device, 0, 98.0)]))
        return await committer.submit(request([reading(device, 0, 91.0), reading(device, 1, 97.0)]))

    outcome = run_with_committer(db_url, body)
    assert isinstance(outcome, IngestOutcome)
    assert outcome.stored == 1
    assert [(c.reading_index, c.stored_value, c.received_value) for c in outcome.conflicts] == [
        (0, 98.0, 91.0)
    ]
    # The stored value is never overwritten; the conflicting one is kept in quarantine.
    assert conn.execute(
        "SELECT value FROM rpm.readings WHERE measured_at = %s", (T0,)
    ).fetchall() == [(98.0,)]
    quarantined = conn.execute(
        "SELECT reason, reading_index, raw_payload, claimed_device, detail, batch_id "
        "FROM rpm.ingest_quarantine JOIN rpm.ingest_payloads USING (payload_sha256)"
    ).fetchall()
    assert len(quarantined) == 1
    reason, index, raw, claimed, detail, batch_id = quarantined[0]
    assert (reason, index, raw, claimed) == ("conflict", 0, b'{"raw": "payload"}', "claimed")
    assert "98" in detail and "91" in detail
    assert batch_id == outcome.batch_id


def test_duplicates_and_conflicts_inside_one_batch(db_url: str, conn: psycopg.Connection) -> None:
    """Concurrent copies of the same reading in one batch: one stored, the rest classified."""
    device = uuid.uuid4()

    async def body(committer: GroupCommitter) -> list[IngestOutcome]:
        return list(
            await asyncio.gather(
                committer.submit(request([reading(device, 5, 80.0)])),
                committer.submit(request([reading(device, 5, 80.0)])),
                committer.submit(request([reading(device, 5, 85.0)])),
            )
        )

    outcomes = run_with_committer(db_url, body, max_delay_s=0.2)
    assert isinstance(outcomes, list)
    assert len({o.batch_id for o in outcomes}) == 1, "the three requests shared one batch"
    assert [(o.stored, o.duplicates, len(o.conflicts)) for o in outcomes] == [
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
    ]
    assert count(conn, "readings") == 1
    assert count(conn, "ingest_quarantine") == 1


def test_concurrent_requests_share_batches(db_url: str, conn: psycopg.Connection) -> None:
    devices = [uuid.uuid4() for _ in range(40)]

    async def body(committer: GroupCommitter) -> list[IngestOutcome]:
        return list(
            await asyncio.gather(
                *(
                    committer.submit(request([reading(d, m, 60.0) for m in range(5)]))
                    for d in devices
                )
            )
        )

    outcomes = run_with_committer(db_url, body, max_delay_s=0.05, workers=1)
    assert isinstance(outcomes, list)
    assert sum(o.stored for o in outcomes) == 200
    assert count(conn, "readings") == 200
    assert count(conn, "ingest_batches") < len(devices)


def test_validation_rejections_are_quarantined_with_the_raw_payload(
    db_url: str, conn: psycopg.Connection
) -> None:
    rejected = (QuarantineEntry("out_of_range", "SpO2 150 % is outside 30..100 %", 1),)

    async def body(committer: GroupCommitter) -> IngestOutcome:
        return await committer.submit(request([reading(uuid.uuid4(), 0, 97.0)], rejected))

    outcome = run_with_committer(db_url, body)
    assert isinstance(outcome, IngestOutcome)
    assert (outcome.stored, outcome.quarantined) == (1, 1)
    assert conn.execute(
        "SELECT reason, detail, reading_index, raw_payload FROM rpm.ingest_quarantine "
        "JOIN rpm.ingest_payloads USING (payload_sha256)"
    ).fetchall() == [("out_of_range", rejected[0].detail, 1, b'{"raw": "payload"}')]
    assert conn.execute("SELECT quarantine_count FROM rpm.ingest_batches").fetchall() == [(1,)]


def test_readings_the_database_refuses_are_quarantined_not_lost(
    db_url: str, conn: psycopg.Connection
) -> None:
    """A row that slipped past validation (NaN here) cannot poison its batch."""
    good, bad = uuid.uuid4(), uuid.uuid4()

    async def body(committer: GroupCommitter) -> list[IngestOutcome]:
        return list(
            await asyncio.gather(
                committer.submit(request([reading(good, 0, 70.0)])),
                committer.submit(request([reading(bad, 0, float("nan"))])),
            )
        )

    outcomes = run_with_committer(db_url, body, max_delay_s=0.2)
    assert isinstance(outcomes, list)
    assert [(o.stored, o.quarantined) for o in outcomes] == [(1, 0), (0, 1)]
    # The caller learns which reading was refused and why (the HTTP answer lists it).
    assert [(e.reading_index, e.reason) for e in outcomes[1].refused] == [
        (0, "rejected_by_database")
    ]
    assert "23514" in outcomes[1].refused[0].detail  # check_violation
    assert conn.execute("SELECT device_id FROM rpm.readings").fetchall() == [(good,)]
    assert conn.execute("SELECT reason FROM rpm.ingest_quarantine").fetchall() == [
        ("rejected_by_database",)
    ]


def test_full_buffer_refuses_instead_of_dropping(db_url: str) -> None:
    async def body(committer: GroupCommitter) -> list[object]:
        device = uuid.uuid4()
        results = await asyncio.gather(
            committer.submit(request([reading(device, m, 70.0) for m in range(8)])),
            committer.submit(request([reading(device, m, 70.0) for m in range(8, 16)])),
            return_exceptions=True,
        )
        return list(results)

    results = run_with_committer(db_url, body, max_pending_rows=10, max_delay_s=0.2)
    assert isinstance(results, list)
    assert isinstance(results[0], IngestOutcome)
    assert isinstance(results[1], BufferFullError)


def test_late_readings_invalidate_rolled_up_ranges(db_url: str, conn: psycopg.Connection) -> None:
    conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = %s", (T0,))
    device = uuid.uuid4()
    late = [reading(device, -30, 70.0), reading(device, -10, 71.0)]
    on_time = [reading(device, 10, 72.0)]

    async def body(committer: GroupCommitter) -> IngestOutcome:
        return await committer.submit(request([*late, *on_time]))

    run_with_committer(db_url, body)
    assert conn.execute(
        "SELECT patient_id, metric_id, range_start, range_end FROM rpm.rollup_invalidations"
    ).fetchall() == [(PATIENT, 1, late[0].measured_at, late[1].measured_at)]


def test_refuses_to_run_without_synchronous_commit(db_url: str, conn: psycopg.Connection) -> None:
    database = conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    conn.execute(
        psycopg.sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
            psycopg.sql.Identifier(database[0])
        )
    )

    async def body(_: GroupCommitter) -> None:
        raise AssertionError("the committer must not start")

    with pytest.raises(UnsafeDatabaseSettingsError, match="synchronous_commit is 'off'"):
        run_with_committer(db_url, body)


def test_late_readings_in_a_batch_with_duplicates_invalidate_only_new_rows(
    db_url: str, conn: psycopg.Connection
) -> None:
    """The deduplicating (merge) path records invalidations for the rows it inserted only."""
    device = uuid.uuid4()
    already = reading(device, -40, 70.0)

    async def first(committer: GroupCommitter) -> IngestOutcome:
        return await committer.submit(request([already]))

    run_with_committer(db_url, first)
    conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = %s", (T0,))
    new_late = reading(device, -20, 71.0)

    async def second(committer: GroupCommitter) -> IngestOutcome:
        return await committer.submit(request([already, new_late]))

    outcome = run_with_committer(db_url, second)
    assert (outcome.stored, outcome.duplicates) == (1, 1)
    assert conn.execute(
        "SELECT range_start, range_end, batch_id FROM rpm.rollup_invalidations"
    ).fetchall() == [(new_late.measured_at, new_late.measured_at, outcome.batch_id)]


def test_errors_that_say_nothing_about_the_data_are_retried_not_quarantined(
    db_url: str, conn: psycopg.Connection
) -> None:
    """A refusal unrelated to the data (here a missing privilege, SQLSTATE 42501; equally a
    deadlock, too many connections or a read-only standby) makes the batch wait and retry:
    the readings are stored once the cause is gone, and nothing is quarantined."""
    device = uuid.uuid4()
    conn.execute("REVOKE INSERT ON rpm.readings FROM CURRENT_USER")

    async def body(committer: GroupCommitter) -> IngestOutcome:
        submitted = asyncio.ensure_future(committer.submit(request([reading(device, 0, 72.0)])))
        await asyncio.sleep(1.0)
        assert not submitted.done(), "the batch must wait, not fail or quarantine"
        conn.execute("GRANT INSERT ON rpm.readings TO CURRENT_USER")
        return await submitted

    outcome = run_with_committer(db_url, body, max_backoff_s=0.2)
    assert (outcome.stored, outcome.quarantined, outcome.refused) == (1, 0, ())
    assert count(conn, "readings") == 1
    assert count(conn, "ingest_quarantine") == 0


def test_the_buffer_count_returns_to_zero_after_quarantine_only_requests(db_url: str) -> None:
    """What a request adds to the buffer is what its batch takes off: whole-payload refusals
    (no readings, one quarantine entry) used to take one more each, loosening the bound."""
    device = uuid.uuid4()
    whole = (QuarantineEntry("malformed_json", "not JSON", None),)

    async def body(committer: GroupCommitter) -> int:
        await asyncio.gather(
            *(committer.submit(request([], whole)) for _ in range(5)),
            committer.submit(request([reading(device, 0, 97.0)])),
        )
        return committer.pending_rows

    assert run_with_committer(db_url, body) == 0
