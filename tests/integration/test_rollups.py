"""Rollups against a real TimescaleDB, whichever edition it is (CI: Apache; by hand: TSL).

The oracle is an independent aggregation in Python of the raw rows read back from
rpm.readings. Readings go in through the ingest group committer, so late readings record their
invalidations exactly as production ingest does.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg
import pytest
from psycopg.rows import class_row

from ingest.committer import GroupCommitter, IngestRequest
from ingest.store import ValidatedReading
from jobs.rollups import (
    DEFAULT_LAG,
    DEFAULT_RAW_HORIZON,
    LOCK_OBJECT,
    POLICY_MARGIN,
    RefreshReport,
    refresh_rollups,
)
from rpmstore.cli import main
from schema.edition import detect_edition
from schema.migrate import LOCK_CLASS
from schema.rollup_levels import (
    LEVELS,
    ROLLUP_WIDTHS,
    bucket_count,
    choose_resolution,
    floor_to_level,
)
from schema.sql import queries

HEART_RATE, SPO2 = 1, 4
DAY = timedelta(days=1)
# Day-aligned and well inside the default 30-day horizon, well before now() - lag.
BASE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - 4 * DAY


@dataclass(frozen=True)
class Bucket:
    count: int
    sum: float
    min: float
    max: float
    last: float
    last_at: datetime


Key = tuple[uuid.UUID, int, datetime]  # patient, metric, bucket start
# The command must not depend on whatever local stack this machine runs (its state file).
NO_LOCAL_STACK = "rollups-tests-no-stack"


def reading(
    patient: uuid.UUID, metric: int, at: datetime, value: float, device: uuid.UUID | None = None
) -> ValidatedReading:
    # One device per (patient, metric) unless given: the natural key is (device, metric, time).
    device = device or uuid.uuid5(patient, str(metric))
    return ValidatedReading(at, device, patient, metric, value, received_at=datetime.now(UTC))


def ingest(db_url: str, readings: Sequence[ValidatedReading], per_request: int = 400) -> None:
    """Through the group committer, as devices' readings arrive (invalidations included)."""

    async def main() -> None:
        async with asyncpg.create_pool(db_url, min_size=1, max_size=4) as pool:
            committer = GroupCommitter(pool, source="import")
            await committer.start()
            try:
                await asyncio.gather(
                    *(
                        committer.submit(
                            IngestRequest(
                                readings=list(readings[i : i + per_request]),
                                reading_indexes=range(len(readings[i : i + per_request])),
                                quarantine=(),
                                raw_payload=b"",
                                received_at=time.time(),
                            )
                        )
                        for i in range(0, len(readings), per_request)
                    )
                )
            finally:
                await committer.stop()

    asyncio.run(main())


def refresh(
    db_url: str,
    *,
    lag: timedelta = DEFAULT_LAG,
    raw_horizon: timedelta = DEFAULT_RAW_HORIZON,
    watermark_lock_timeout: timedelta = timedelta(seconds=2),
) -> RefreshReport:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return refresh_rollups(
            conn,
            lag=lag,
            raw_horizon=raw_horizon,
            watermark_lock_timeout=watermark_lock_timeout,
        )


def oracle(conn: psycopg.Connection, width: timedelta) -> dict[Key, Bucket]:
    """The rollup computed in Python from every raw reading stored."""
    rows = conn.execute(
        "SELECT patient_id, metric_id, measured_at, value FROM rpm.readings"
    ).fetchall()
    groups: dict[Key, list[tuple[datetime, float]]] = defaultdict(list)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for patient, metric, at, value in rows:
        start = epoch + ((at - epoch) // width) * width
        groups[(patient, metric, start)].append((at, value))
    result = {}
    for key, points in groups.items():
        values = [v for _, v in points]
        last_at, last = max(points)  # latest time; on a tie the larger value
        result[key] = Bucket(
            len(values), math.fsum(values), min(values), max(values), last, last_at
        )
    return result


def stored(conn: psycopg.Connection, level: str) -> dict[Key, Bucket]:
    """What the edition's rollup relation answers (materialized part and real-time tail)."""
    query = psycopg.sql.SQL(
        "SELECT patient_id, metric_id, bucket_start, reading_count, value_sum, value_min, "
        "value_max, last_value, last_at FROM {}"
    ).format(psycopg.sql.Identifier("rpm", f"readings_{level}"))
    return {
        (p, m, b): Bucket(int(c), s, lo, hi, last, last_at)
        for p, m, b, c, s, lo, hi, last, last_at in conn.execute(query).fetchall()
    }


def assert_same(actual: dict[Key, Bucket], expected: dict[Key, Bucket], level: str) -> None:
    assert actual.keys() == expected.keys(), f"{level}: different buckets"
    for key, want in expected.items():
        got = actual[key]
        # Sums are added in a different order per level; everything else is exact.
        assert math.isclose(got.sum, want.sum, rel_tol=1e-12), (level, key, got, want)
        assert (got.count, got.min, got.max, got.last, got.last_at) == (
            want.count,
            want.min,
            want.max,
            want.last,
            want.last_at,
        ), (level, key, got, want)


def assert_rollups_match_raw(conn: psycopg.Connection) -> None:
    for level, width in ROLLUP_WIDTHS.items():
        assert_same(stored(conn, level), oracle(conn, width), level)


@dataclass(frozen=True)
class Row:
    """A row of rpm.vitals_timeline."""

    bucket_start: datetime
    count: int
    min: float | None
    max: float | None
    avg: float | None
    last: float | None
    last_at: datetime | None


def timeline(
    conn: psycopg.Connection,
    patient: uuid.UUID,
    metric: int,
    start: datetime,
    end: datetime,
    resolution: str,
) -> list[Row]:
    with conn.cursor(row_factory=class_row(Row)) as cursor:
        return cursor.execute(
            "SELECT * FROM rpm.vitals_timeline(%s, %s::smallint, %s, %s, %s)",
            (patient, metric, start, end, resolution),
        ).fetchall()


def spread(
    rng: random.Random, patients: Iterable[uuid.UUID], start: datetime, hours: int, n: int
) -> list[ValidatedReading]:
    """``n`` readings per patient and metric at random (whole-millisecond) times, shuffled."""
    readings = []
    for patient in patients:
        for metric in (HEART_RATE, SPO2):
            times = {
                start + timedelta(milliseconds=rng.randrange(hours * 3_600_000)) for _ in range(n)
            }
            readings += [reading(patient, metric, t, round(rng.uniform(50, 150), 2)) for t in times]
    rng.shuffle(readings)
    return readings


def materialized_past(report: RefreshReport, at: datetime) -> bool:
    return report.materialized_until is not None and report.materialized_until > at


def test_rollups_equal_raw_after_late_out_of_order_inserts_and_repeated_refreshes(
    db_url: str, conn: psycopg.Connection
) -> None:
    rng = random.Random(4)
    patients = [uuid.uuid4(), uuid.uuid4()]
    first = spread(rng, patients, BASE, hours=48, n=600)
    # Two devices of one patient measuring at the same instant: both count, the larger is last.
    tie_at = BASE + timedelta(hours=5, minutes=7, seconds=30)
    first += [
        reading(patients[0], HEART_RATE, tie_at, 61.0, device=uuid.uuid4()),
        reading(patients[0], HEART_RATE, tie_at, 99.0, device=uuid.uuid4()),
    ]
    ingest(db_url, first)
    report = refresh(db_url)
    assert report.ran
    assert materialized_past(report, max(r.measured_at for r in first)), report
    assert_rollups_match_raw(conn)
    tie_bucket = stored(conn, "1m")[(patients[0], HEART_RATE, tie_at.replace(second=0))]
    assert (tie_bucket.last, tie_bucket.last_at) == (99.0, tie_at)

    # Late readings: into buckets already rolled up (earlier and later than what they hold),
    # into empty minutes, hours and a whole new day, out of order; plus retried duplicates.
    late = spread(rng, patients, BASE - DAY, hours=72, n=150)
    ingest(db_url, [*late, *first[:50]])
    if detect_edition(conn).license == "apache":
        pending = conn.execute("SELECT count(*) FROM rpm.rollup_invalidations").fetchone()
        assert pending is not None and pending[0] > 0, "late readings recorded invalidations"
    report = refresh(db_url)
    assert_rollups_match_raw(conn)
    if report.edition == "apache":
        assert report.invalidations > 0
        assert report.rows_written.get("1m", 0) > 0

    # Refreshing again changes nothing, and a refresh with nothing to do is a no-op.
    before = {level: stored(conn, level) for level in ROLLUP_WIDTHS}
    again = refresh(db_url)
    assert again.invalidations == 0
    assert {level: stored(conn, level) for level in ROLLUP_WIDTHS} == before
    assert_rollups_match_raw(conn)


def test_the_newest_readings_are_aggregated_on_the_fly(
    db_url: str, conn: psycopg.Connection
) -> None:
    """Buckets newer than the refresh threshold come from raw readings until materialized."""
    patient = uuid.uuid4()
    ingest(db_url, [reading(patient, SPO2, BASE + timedelta(hours=1), 95.0)])
    report = refresh(db_url, lag=timedelta(hours=2))
    assert report.threshold is not None
    recent = [
        reading(patient, SPO2, report.threshold + timedelta(minutes=m), 90.0 + m) for m in (5, 65)
    ]
    ingest(db_url, recent)
    assert_rollups_match_raw(conn)
    rows = timeline(
        conn, patient, SPO2, report.threshold, report.threshold + timedelta(hours=2), "1m"
    )
    assert [(r.bucket_start, r.count, r.last) for r in rows if r.count] == [
        (r.measured_at.replace(second=0, microsecond=0), 1, r.value) for r in recent
    ]


def test_timeline_has_explicit_gaps_and_utc_buckets(db_url: str, conn: psycopg.Connection) -> None:
    patient = uuid.uuid4()
    hr = [
        reading(patient, HEART_RATE, BASE + timedelta(hours=1, minutes=10), 70.0),
        reading(patient, HEART_RATE, BASE + timedelta(hours=1, minutes=50), 80.0),
        reading(patient, HEART_RATE, BASE + timedelta(hours=4, seconds=1), 90.0),
        reading(patient, HEART_RATE, BASE + timedelta(days=2, hours=3), 60.0),
    ]
    ingest(db_url, hr)
    refresh(db_url)
    # A session in a DST time zone changes nothing: buckets are UTC.
    conn.execute("SET TimeZone = 'America/New_York'")

    hourly = timeline(conn, patient, HEART_RATE, BASE, BASE + timedelta(hours=6), "1h")
    assert [r.bucket_start for r in hourly] == [BASE + timedelta(hours=h) for h in range(6)]
    assert [r.count for r in hourly] == [0, 2, 0, 0, 1, 0]
    assert hourly[1] == Row(
        BASE + timedelta(hours=1), 2, 70.0, 80.0, 75.0, 80.0, BASE + timedelta(hours=1, minutes=50)
    )
    assert hourly[0] == Row(BASE, 0, None, None, None, None, None), "a gap is a row of its own"

    # An unaligned start includes the bucket it falls in; the end is exclusive.
    minutes = timeline(
        conn,
        patient,
        HEART_RATE,
        BASE + timedelta(hours=1, minutes=9, seconds=30),
        BASE + timedelta(hours=1, minutes=12),
        "1m",
    )
    assert [(r.bucket_start.minute, r.count) for r in minutes] == [(9, 0), (10, 1), (11, 0)]

    daily = timeline(conn, patient, HEART_RATE, BASE, BASE + 4 * DAY, "1d")
    assert [r.bucket_start for r in daily] == [BASE + n * DAY for n in range(4)]
    assert [r.count for r in daily] == [3, 0, 1, 0]
    assert (daily[0].min, daily[0].max, daily[0].avg) == (70.0, 90.0, 80.0)

    raw = timeline(conn, patient, HEART_RATE, BASE, BASE + 4 * DAY, "raw")
    assert [(r.bucket_start, r.count, r.last) for r in raw] == [
        (r.measured_at, 1, r.value) for r in hr
    ]

    assert timeline(conn, patient, HEART_RATE, BASE, BASE, "1h") == []
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown resolution"):
        timeline(conn, patient, HEART_RATE, BASE, BASE + DAY, "5m")


def test_timeline_matches_raw_for_every_resolution(db_url: str, conn: psycopg.Connection) -> None:
    rng = random.Random(7)
    patient = uuid.uuid4()
    ingest(db_url, spread(rng, [patient], BASE + timedelta(hours=3), hours=30, n=500))
    refresh(db_url)
    ingest(db_url, spread(rng, [patient], BASE, hours=40, n=100))  # late, not refreshed yet
    refresh(db_url)
    start, end = BASE + timedelta(hours=2, minutes=30), BASE + 2 * DAY
    for level, width in ROLLUP_WIDTHS.items():
        expected = {k[2]: v for k, v in oracle(conn, width).items() if k[:2] == (patient, SPO2)}
        rows = timeline(conn, patient, SPO2, start, end, level)
        assert len(rows) == bucket_count(start, end, width)
        for row in rows:
            want = expected.get(row.bucket_start)
            if want is None:
                assert row == Row(row.bucket_start, 0, None, None, None, None, None)
            else:
                assert (row.count, row.min, row.max, row.last, row.last_at) == (
                    want.count,
                    want.min,
                    want.max,
                    want.last,
                    want.last_at,
                )
                assert row.avg is not None
                assert math.isclose(row.avg, want.sum / want.count, rel_tol=1e-12)


def test_choose_resolution_picks_the_coarsest_rollup_with_enough_points() -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    assert choose_resolution(day, day + 90 * DAY, 60) == "1d"  # 90 daily points
    assert choose_resolution(day, day + 30 * DAY, 60) == "1h"  # 30 days < 60 points: 720 hours
    assert choose_resolution(day, day + DAY, 24) == "1h"
    assert choose_resolution(day, day + DAY, 25) == "1m"
    assert choose_resolution(day, day + timedelta(minutes=30), 100) == "raw"
    # Buckets overlapping the range count, like the timeline's rows.
    assert choose_resolution(day + timedelta(hours=23), day + timedelta(hours=25), 2) == "1d"
    assert bucket_count(day + timedelta(hours=23), day + timedelta(hours=25), DAY) == 2
    with pytest.raises(ValueError, match="after start"):
        choose_resolution(day, day, 10)
    with pytest.raises(ValueError, match="at least 1"):
        choose_resolution(day, day + DAY, 0)


def test_concurrent_refreshers_do_not_double_count(db_url: str, conn: psycopg.Connection) -> None:
    rng = random.Random(11)
    patients = [uuid.uuid4() for _ in range(3)]
    ingest(db_url, spread(rng, patients, BASE, hours=48, n=200))
    refresh(db_url)
    errors: list[BaseException] = []
    reports: list[RefreshReport] = []
    stop = threading.Event()

    def refresher() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as own:
                while not stop.is_set():
                    reports.append(refresh_rollups(own))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=refresher) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(6):  # late readings keep arriving while both refresh
            ingest(db_url, spread(rng, patients, BASE - DAY, hours=72, n=15 + round_))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert len(reports) >= 2 and all(r.ran for r in reports)
    refresh(db_url)
    assert_rollups_match_raw(conn)


def test_a_refresher_that_must_not_wait_skips_while_another_runs(db_url: str) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as other,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        other.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_OBJECT))
        assert not refresh_rollups(conn, wait=False).ran
        other.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, LOCK_OBJECT))
        assert refresh_rollups(conn, wait=False).ran


def test_refresh_never_recomputes_buckets_before_the_raw_horizon(
    db_url: str, conn: psycopg.Connection
) -> None:
    """Once raw chunks are dropped, late data there must not replace the rollups."""
    patient = uuid.uuid4()
    old_day = BASE - 16 * DAY
    old = [reading(patient, HEART_RATE, old_day + timedelta(minutes=m), 60.0 + m) for m in range(5)]
    ingest(db_url, [*old, reading(patient, HEART_RATE, BASE, 70.0)])
    refresh(db_url)  # default horizon (30 days): the old day is rolled up
    before = stored(conn, "1d")[(patient, HEART_RATE, old_day)]
    assert before.count == 5

    # Retention drops the old raw chunk; then a late reading lands on that day.
    conn.execute("SELECT drop_chunks('rpm.readings', older_than => %s::timestamptz)", (BASE - DAY,))
    assert oracle(conn, DAY).keys() == {(patient, HEART_RATE, BASE)}
    ingest(db_url, [reading(patient, HEART_RATE, old_day + timedelta(hours=3), 99.0)])

    report = refresh(db_url, raw_horizon=timedelta(days=10))
    assert report.horizon_start is not None and report.horizon_start > old_day
    if report.edition == "apache":
        assert report.invalidations_before_horizon == 1
    after = {level: stored(conn, level) for level in ROLLUP_WIDTHS}
    assert after["1d"][(patient, HEART_RATE, old_day)] == before
    assert after["1h"][(patient, HEART_RATE, old_day)].count == 5
    assert (patient, HEART_RATE, old_day + timedelta(hours=3)) not in after["1h"]


def test_refresher_waits_for_ingest_batches_that_read_the_old_threshold(
    db_url: str, conn: psycopg.Connection
) -> None:
    """A batch in flight while the threshold moves past its readings is never lost."""
    patient = uuid.uuid4()
    first = refresh(db_url, lag=timedelta(hours=3))
    assert first.threshold is not None
    in_flight_at = first.threshold + timedelta(hours=1)
    edition = detect_edition(conn).license
    ingest_commit = queries("ingest_commit")
    with psycopg.connect(db_url) as batch:
        # What the committer does: read the threshold, then write, then commit later.
        row = batch.execute(ingest_commit["begin_batch"]).fetchone()
        assert row is not None and row[1] == (first.threshold if edition == "apache" else None)
        batch.execute(
            "INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, "
            "patient_id, metric_id) VALUES (%s, now(), 93.0, %s, %s, %s, %s)",
            (in_flight_at, row[0], uuid.uuid4(), patient, SPO2),
        )
        outcome: list[RefreshReport] = []
        refresher = threading.Thread(
            target=lambda: outcome.append(
                refresh(db_url, watermark_lock_timeout=timedelta(minutes=5))
            )
        )
        refresher.start()
        if edition == "apache":
            # The refresher queues behind the batch for the watermark lock...
            waiting = (
                "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = %s::regclass)"
            )
            while refresher.is_alive():
                if conn.execute(waiting, ("rpm.rollup_watermark",)).fetchone() == (True,):
                    break
                time.sleep(0.01)
        else:
            refresher.join()  # TimescaleDB tracks its own invalidations
        batch.commit()
        refresher.join()
    assert outcome
    if edition == "apache":
        # ...so its materialization already holds the batch's reading.
        assert outcome[0].threshold_advanced
        assert materialized_past(outcome[0], in_flight_at)
    else:
        refresh(db_url)
    minute = stored(conn, "1m")[(patient, SPO2, in_flight_at.replace(second=0, microsecond=0))]
    assert (minute.count, minute.last) == (1, 93.0)


def test_rollups_refresh_command_uses_the_settings(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MQTT_URL", "mqtt://unused@127.0.0.1:1")
    monkeypatch.setenv("RPMSTORE_INSTANCE", NO_LOCAL_STACK)
    monkeypatch.setenv("RPMSTORE_ROLLUP_RAW_HORIZON", "P10D")
    patient = uuid.uuid4()
    ingest(db_url, [reading(patient, SPO2, BASE + timedelta(hours=2), 96.0)])

    def horizon() -> datetime:  # the first UTC midnight after now - 10 days
        return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - 9 * DAY

    before = horizon()
    assert main(["rollups", "refresh"]) == 0
    out = capsys.readouterr().out
    # (read before and after, in case the run straddles midnight)
    assert any(f": {h.isoformat()} to " in out for h in (before, horizon())), out
    with psycopg.connect(db_url) as conn:
        assert stored(conn, "1d")[(patient, SPO2, BASE)].count == 1


def test_rollups_refresh_loop_stops_on_sigterm(db_url: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "rpmstore.cli", "rollups", "refresh", "--loop", "--interval", "0.1"],
        env={
            **os.environ,
            "DATABASE_URL": db_url,
            "MQTT_URL": "mqtt://unused@127.0.0.1:1",
            "RPMSTORE_INSTANCE": NO_LOCAL_STACK,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as loop:
        try:
            assert loop.stdout is not None
            lines = [loop.stdout.readline() for _ in range(2)]
            assert all(line.startswith("rollups (") for line in lines), lines
            loop.send_signal(signal.SIGTERM)
            assert loop.wait(timeout=60) == 0
        finally:
            loop.kill()


def test_refresh_aligns_every_policy_and_retention_sees_their_window(
    db_url: str, conn: psycopg.Connection
) -> None:
    """Each continuous aggregate's refresh policy is found and follows the settings.

    TimescaleDB 2.20 changed which hypertable ``timescaledb_information.jobs`` names for a
    refresh policy (the aggregate itself, not its materialisation hypertable); a lookup by
    that name matched nothing, left the policies on their 30-day window and switched off
    retention's guard for it (rolled-up history erased). Counted here without that join.
    """
    if not detect_edition(conn).continuous_aggregates:
        pytest.skip("Apache edition: no continuous aggregates, so no refresh policies to find")
    horizon = timedelta(days=10)
    refresh(db_url, raw_horizon=horizon)
    policies = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE (config ->> 'start_offset')::interval = %s "
        "AND (config ->> 'end_offset')::interval = %s) "
        "FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_refresh_continuous_aggregate'",
        (horizon - POLICY_MARGIN, DEFAULT_LAG),
    ).fetchone()
    assert policies == (len(ROLLUP_WIDTHS), len(ROLLUP_WIDTHS))

    with conn.transaction():  # one now() for both statements
        window = conn.execute(queries("retention")["cagg_refresh_window_start"]).fetchone()
        now = conn.execute("SELECT now()").fetchone()
    assert window is not None and now is not None
    assert window[0] == now[0] - horizon


def test_both_editions_leave_the_day_before_the_horizon_start_alone(
    db_url: str, conn: psycopg.Connection
) -> None:
    """One rule on both editions: no refresh recomputes a bucket before the day-aligned horizon
    start. A late reading between now() - raw_horizon and that midnight is stored but rolled up
    by neither the refresher nor (TSL) a refresh policy, so the levels agree with each other
    and the editions with each other there (on 912bc43 the TSL policies rolled it into 1m and
    1h but not 1d)."""
    horizon = timedelta(days=10)
    patient = uuid.uuid4()
    ingest(db_url, [reading(patient, HEART_RATE, BASE, 70.0)])
    report = refresh(db_url, raw_horizon=horizon)
    assert report.horizon_start is not None
    late_at = report.horizon_start - timedelta(minutes=1)
    ingest(db_url, [reading(patient, HEART_RATE, late_at, 99.0)])

    if detect_edition(conn).continuous_aggregates:
        jobs = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY job_id"
        ).fetchall()
        assert len(jobs) == len(ROLLUP_WIDTHS)
        for (job_id,) in jobs:  # 1m, 1h, 1d: each level refreshes from the one below
            conn.execute("CALL run_job(%s)", (job_id,))
    refresh(db_url, raw_horizon=horizon)

    for level in LEVELS:
        late_bucket = floor_to_level(late_at, level)
        assert (patient, HEART_RATE, late_bucket) not in stored(conn, level), level
    assert stored(conn, "1d")[(patient, HEART_RATE, BASE)].count == 1
