"""Re-chunk and repartition against a real TimescaleDB: kills, concurrent ingest, cutover,
rollback, finalize, a faithful copy, and pg_amcheck after every fault."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from ingest.committer import GroupCommitter, IngestRequest
from ingest.store import ValidatedReading
from jobs.rechunk import (
    LockBusyError,
    Options,
    Rechunker,
    RechunkRefusedError,
    VerificationError,
)
from jobs.rollups import DEFAULT_RAW_HORIZON, refresh_rollups
from rpmstore.cli.rechunk import PAUSE_MARKER
from rpmstore.localstack.debian_root import PG_BIN, DebianRoot
from schema.introspect import describe
from schema.rollup_levels import LEVELS, ROLLUP_WIDTHS
from tests.conftest import PgServer

pytestmark = pytest.mark.slow  # whole re-chunk runs in subprocesses

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
SEED_START = NOW - timedelta(days=35)
SEED_DEVICES = 20


def seed(conn: psycopg.Connection, rows: int) -> int:
    """``rows`` readings, one a minute spread over 20 devices, from 35 days ago to 10 min ago."""
    span_minutes = int((NOW - SEED_START).total_seconds() // 60) - 10
    step = max(1, span_minutes // rows)
    conn.execute(
        """
        INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id,
                                  patient_id, metric_id, utc_offset_minutes, client_reading_id)
        SELECT %(start)s + (i * %(step)s) * interval '1 minute', now(), 60 + i %% 40, 0,
               md5('device' || i %% %(devices)s)::uuid, md5('patient' || i %% %(devices)s)::uuid,
               1 + i %% 3, CASE WHEN i %% 2 = 0 THEN 60 END,
               CASE WHEN i %% 5 = 0 THEN 'r-' || i END
        FROM generate_series(0, %(rows)s - 1) i
        """,
        {"start": SEED_START, "step": step, "devices": SEED_DEVICES, "rows": rows},
    )
    return rows


def scalar(conn: psycopg.Connection, query: str, params: dict[str, object] | None = None) -> int:
    row = conn.execute(query, params or {}).fetchone()
    assert row is not None
    return int(row[0])


def dimensions(conn: psycopg.Connection, table: str = "readings") -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT column_name, coalesce(time_interval::text, num_partitions::text) "
        "FROM timescaledb_information.dimensions "
        "WHERE hypertable_schema = 'rpm' AND hypertable_name = %s ORDER BY dimension_number",
        (table,),
    ).fetchall()
    return [(str(c), str(v)) for c, v in rows]


def amcheck(pg_server: PgServer, debian_root: DebianRoot, db_url: str) -> None:
    """pg_amcheck --heapallindexed over every relation of the database: heap and btrees agree."""
    database = str(conninfo_to_dict(db_url)["dbname"])
    admin_url = pg_server.url(database, admin=True)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    result = debian_root.run(
        debian_root.account("postgres"),
        [f"{PG_BIN}/pg_amcheck", "--heapallindexed", "--verbose", admin_url],
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "_chunk" in result.stderr + result.stdout, "pg_amcheck must have checked the chunks"


# -- the command as a real process --------------------------------------------------------------


@dataclass
class Command:
    process: subprocess.Popen[bytes]
    log: Path

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=60) == -signal.SIGKILL

    def finish(self, timeout: float = 300) -> str:
        code = self.process.wait(timeout=timeout)
        output = self.log.read_text(errors="replace")
        assert code == 0, output[-3000:]
        return output


def rpmstore(db_url: str, log: Path, *args: str, pause: str | None = None) -> Command:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "MQTT_URL": "mqtt://unused@127.0.0.1:1",
        "RPMSTORE_LOG_LEVEL": "WARNING",
        # An instance with no local-stack state: the developer's own stack is never consulted.
        "RPMSTORE_INSTANCE": f"rechunk-test-{os.getpid()}",
    }
    env.pop("RPMSTORE_RECHUNK_TEST_PAUSE", None)
    if pause is not None:
        env["RPMSTORE_RECHUNK_TEST_PAUSE"] = pause
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", *args], env=env, stdout=out, stderr=out
        )
    return Command(process, log)


def ledger(conn: psycopg.Connection) -> dict[str, tuple[str, int, int]]:
    rows = conn.execute(
        "SELECT source_chunk, state, batches, copied_rows FROM rpm.rechunk_chunks"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


# -- concurrent ingest through the real group committer -----------------------------------------


@dataclass
class IngestLoad:
    """Keeps the group committer busy from a thread: late readings into old chunks, fresh ones,
    and exact re-sends (which take the staging-merge path)."""

    url: str
    sent: set[tuple[uuid.UUID, int, datetime]] = field(default_factory=set)
    batches: int = 0
    duplicates: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _extra: list[list[ValidatedReading]] = field(default_factory=list)

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)
        assert self.error is None, self.error

    def send_once(self, readings: list[ValidatedReading]) -> None:
        self._extra.append(readings)

    def wait_batches(self, count: int) -> None:
        deadline = time.monotonic() + 120
        while self.batches < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"ingest stuck at {self.batches} batches"
            time.sleep(0.02)

    def _readings(self, n: int) -> list[ValidatedReading]:
        device = uuid.uuid5(uuid.NAMESPACE_OID, f"live-{n % 7}")
        patient = uuid.uuid5(uuid.NAMESPACE_OID, f"live-patient-{n % 7}")
        readings = []
        for k in range(40):
            # Seeded rows sit on whole minutes; these on :17 s, so keys never collide with them.
            late = SEED_START + timedelta(minutes=(n * 977 + k * 131) % (34 * 24 * 60), seconds=17)
            fresh = (
                NOW - timedelta(minutes=9) + timedelta(seconds=(n * 40 + k) % 480, milliseconds=1)
            )
            at = late if k % 2 else fresh
            readings.append(ValidatedReading(at, device, patient, 1 + k % 3, 70.0, at))
        return readings

    async def _main(self) -> None:
        try:
            async with asyncpg.create_pool(self.url, min_size=1, max_size=3) as pool:
                committer = GroupCommitter(pool, source="http", max_delay_s=0.001)
                await committer.start()
                previous: list[ValidatedReading] = []
                n = 0
                while not self._stop.is_set():
                    readings = self._readings(n)
                    if n % 4 == 3:
                        readings = readings[:20] + previous[:20]  # exact re-sends
                    if self._extra:
                        readings = readings + self._extra.pop()
                    outcome = await committer.submit(
                        IngestRequest(
                            readings=readings,
                            reading_indexes=list(range(len(readings))),
                            quarantine=(),
                            raw_payload=b"{}",
                            received_at=time.time(),
                        )
                    )
                    assert not outcome.conflicts and not outcome.refused, outcome
                    self.duplicates += outcome.duplicates
                    self.sent.update((r.device_id, r.metric_id, r.measured_at) for r in readings)
                    previous = readings
                    self.batches += 1
                    n += 1
                await committer.stop()
        except BaseException as exc:
            self.error = exc
            raise


@dataclass
class RollupReader:
    """Reads the three rollup levels in a loop from a thread, as charts do. (Not asserted:
    that counts never go down. On the full edition a policy refresh may materialize a bucket
    from a snapshot older than a reading the real-time tail already showed; the reading's
    invalidation brings it back at the next refresh. TimescaleDB's semantics, not the swap's.)"""

    url: str
    reads: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)
        assert self.error is None, self.error

    def _main(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    for level in LEVELS:
                        query = psycopg.sql.SQL("SELECT sum(reading_count) FROM {}").format(
                            psycopg.sql.Identifier("rpm", f"readings_{level}")
                        )
                        row = conn.execute(query).fetchone()
                        assert row is not None and row[0] is not None, level
                    self.reads += 1
                    time.sleep(0.01)
        except BaseException as exc:
            self.error = exc


@pytest.fixture
def load(db_url: str) -> Iterator[Callable[[], IngestLoad]]:
    started: list[IngestLoad] = []

    def make() -> IngestLoad:
        load = IngestLoad(db_url)
        load.start()
        started.append(load)
        return load

    yield make
    for load in started:
        if not load._stop.is_set():
            load.stop()


def full_edition(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT current_setting('timescaledb.license')").fetchone() == (
        "timescale",
    )


@pytest.fixture
def rechunk_url(db_url: str, conn: psycopg.Connection, pg_server: PgServer) -> str:
    """The URL the re-chunk runs with. The owner's, as ingest and the API; on the full edition
    the superuser's: rpm.readings has continuous aggregates there, and the cutover moves them by
    writing TimescaleDB's catalogue, which only the extension's owner may (as in production)."""
    if not full_edition(conn):
        return db_url
    return pg_server.url(str(conninfo_to_dict(db_url)["dbname"]), admin=True)


@pytest.fixture
def rechunk_conn(rechunk_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(rechunk_url, autocommit=True) as connection:
        yield connection


# -- tests --------------------------------------------------------------------------------------


def test_rechunk_killed_mid_copy_resumes_and_cuts_over(
    db_url: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    pg_server: PgServer,
    debian_root: DebianRoot,
    rechunk_url: str,
) -> None:
    """SIGKILL inside a batch's transaction and between two batches; each rerun continues
    where the ledger says, and the result holds every row exactly once."""
    rows = seed(conn, 30_000)
    source_chunks = scalar(conn, "SELECT count(*) FROM show_chunks('rpm.readings')")
    args = ("rechunk", "readings", "--chunk-interval", "1 day", "--batch-rows", "1000")

    first = rpmstore(rechunk_url, tmp_path / "first.log", *args, pause="inside:3")
    first.wait_for(PAUSE_MARKER)
    first.kill()
    after_first = ledger(conn)
    assert len(after_first) == source_chunks
    assert sum(b for _s, b, _r in after_first.values()) == 3
    copied = sum(r for _s, _b, r in after_first.values())
    # The fourth batch was inserted but never committed: nothing of it is in the new table.
    assert scalar(conn, "SELECT count(*) FROM rpm.readings_rc1") == copied

    second = rpmstore(rechunk_url, tmp_path / "second.log", *args, pause="between:5")
    second.wait_for(PAUSE_MARKER)
    second.kill()
    after_second = ledger(conn)
    assert sum(b for _s, b, _r in after_second.values()) == 3 + 5
    assert scalar(conn, "SELECT count(*) FROM rpm.readings_rc1") == sum(
        r for _s, _b, r in after_second.values()
    )

    output = rpmstore(rechunk_url, tmp_path / "third.log", *args).finish()
    assert "cut over" in output
    assert dimensions(conn) == [("measured_at", "1 day")]
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == rows
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, metric_id, measured_at "
            "FROM rpm.readings) k",
        )
        == rows
    )
    final = ledger(conn)
    assert {s for s, _b, _r in final.values()} == {"verified"}
    # Each row was copied once: batches repeated after a kill inserted what they had not.
    assert sum(r for _s, _b, r in final.values()) == rows
    # Daily chunks nest in weekly ones: one lineage row per new chunk.
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_lineage") == scalar(
        conn, "SELECT count(*) FROM show_chunks('rpm.readings')"
    )
    assert scalar(conn, "SELECT sum(row_count) FROM rpm.rechunk_lineage") == rows
    assert (
        scalar(conn, "SELECT count(*) FROM rpm.rechunk_reconciliation WHERE difference <> 0") == 0
    )
    assert scalar(conn, "SELECT sum(new_rows) FROM rpm.rechunk_reconciliation") == rows
    amcheck(pg_server, debian_root, db_url)


def test_ingest_during_rechunk_loses_nothing(
    db_url: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    load: Callable[[], IngestLoad],
    pg_server: PgServer,
    debian_root: DebianRoot,
    rechunk_url: str,
) -> None:
    """The group committer writes (COPY fast path and staging merge) before, during and after
    the copy, across a SIGKILL and across the cutover: sent = stored, no duplicates, every
    source chunk verified in the ledger, reconciliation zero."""
    seeded = seed(conn, 20_000)
    ingest = load()
    ingest.wait_batches(5)
    reader = RollupReader(db_url)
    reader.start()
    args = ("rechunk", "readings", "--chunk-interval", "1 day", "--batch-rows", "500")
    paused = rpmstore(rechunk_url, tmp_path / "paused.log", *args, pause="between:4")
    paused.wait_for(PAUSE_MARKER)
    # The dual write is on; the copy has stopped. Ingest goes on, and one reading opens a
    # week that had no chunk: a source chunk born during the migration.
    newborn = SEED_START - timedelta(days=20, seconds=-17)
    ingest.send_once([ValidatedReading(newborn, uuid.uuid4(), uuid.uuid4(), 1, 80.0, newborn)])
    ingest.wait_batches(ingest.batches + 20)
    paused.kill()
    ingest.wait_batches(ingest.batches + 5)

    output = rpmstore(rechunk_url, tmp_path / "resumed.log", *args).finish()
    assert "cut over" in output
    ingest.wait_batches(ingest.batches + 20)  # into the new table, mirrored into the old one
    ingest.stop()
    # Clinicians' charts read the rollups all along: never an error (a deadlock with the swap
    # replacing the views would be one).
    reader.stop()
    assert reader.reads > 10
    assert ingest.duplicates > 0, "the staging-merge path must have run"

    expected = seeded + len(ingest.sent)
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == expected
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, metric_id, measured_at "
            "FROM rpm.readings) k",
        )
        == expected
    )
    # Until finalize, the old table receives the new table's rows too: rollback stays lossless.
    assert scalar(conn, "SELECT count(*) FROM rpm.readings_rc1_old") == expected
    old_chunks = {
        row[0]
        for row in conn.execute("SELECT show_chunks('rpm.readings_rc1_old')::text").fetchall()
    }
    states = ledger(conn)
    assert set(states) == old_chunks
    assert {s for s, _b, _r in states.values()} == {"verified"}
    assert (
        scalar(conn, "SELECT count(*) FROM rpm.rechunk_reconciliation WHERE difference <> 0") == 0
    )
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_reconciliation") > 30
    assert dimensions(conn) == [("measured_at", "1 day")]

    rpmstore(rechunk_url, tmp_path / "finalize.log", "rechunk", "finalize").finish()
    assert scalar(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'readings_rc1_old'") == 0
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == expected
    # The rollups (full edition: continuous aggregates, refreshed by their policies while
    # ingest ran, moved by the cutover) agree with the raw readings over the refresh window.
    refreshed(conn)
    window = refresh_start(DEFAULT_RAW_HORIZON)
    assert split(rollups(conn), window)[1] == split(raw_oracle(conn), window)[1]
    amcheck(pg_server, debian_root, db_url)


def _decorate(conn: psycopg.Connection) -> None:
    """Objects other migrations will add around rpm.readings (alerts, access, rollups)."""
    conn.execute(
        """
        COMMENT ON TABLE rpm.readings IS 'every reading';
        COMMENT ON COLUMN rpm.readings.value IS 'canonical unit';
        COMMENT ON INDEX rpm.readings_natural_key IS 'dedup';
        ALTER TABLE rpm.readings ADD CONSTRAINT readings_metric_positive CHECK (metric_id > 0);
        ALTER TABLE rpm.readings ALTER COLUMN client_reading_id SET DEFAULT 'none';
        ALTER TABLE rpm.readings ALTER COLUMN value SET STATISTICS 500;
        CREATE INDEX readings_batch ON rpm.readings (batch_id) WHERE batch_id > 0;
        -- A serial column (its sequence must survive finalize) and a type with no hash
        -- function (json: checksummed through its text).
        ALTER TABLE rpm.readings ADD COLUMN reading_no bigserial,
                                 ADD COLUMN note json DEFAULT '{"source": "seed"}';
        GRANT SELECT ON rpm.readings TO PUBLIC;
        GRANT UPDATE (client_reading_id) ON rpm.readings TO PUBLIC;
        ALTER TABLE rpm.readings ENABLE ROW LEVEL SECURITY;
        CREATE POLICY readings_own_rows ON rpm.readings FOR SELECT TO PUBLIC
            USING (patient_id IS NOT NULL);
        COMMENT ON POLICY readings_own_rows ON rpm.readings IS 'clinicians see their patients';
        CREATE TABLE rpm.readings_seen (n bigint NOT NULL);
        INSERT INTO rpm.readings_seen VALUES (0);
        CREATE FUNCTION rpm.count_reading() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN UPDATE rpm.readings_seen SET n = n + 1; RETURN NULL; END $$;
        CREATE TRIGGER readings_counted AFTER INSERT ON rpm.readings
            FOR EACH ROW EXECUTE FUNCTION rpm.count_reading();
        """
    )


# Full edition: the argument of TimescaleDB's invalidation trigger is the hypertable id, which
# the new table has its own of (the continuous aggregates follow it to the new table).
_INVALIDATION_ARGUMENT = re.compile(r"continuous_agg_invalidation_trigger\('\d+'\)")


def _without_dimensions(description: dict[str, list[tuple[str, ...]]]) -> dict[str, object]:
    return {
        k: [tuple(_INVALIDATION_ARGUMENT.sub("(id)", str(x)) for x in row) for row in v]
        for k, v in description.items()
        if k != "hypertable_dimensions"
    }


def test_new_table_is_a_faithful_copy_and_rollback_restores_the_old(
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    _decorate(conn)
    seed(conn, 5_000)
    assert scalar(conn, "SELECT n FROM rpm.readings_seen") == 5_000
    before = describe(conn)
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=2_000))

    report = rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
    assert report.state == "cut_over"
    # The copy did not fire the user trigger for history; it is on the new table now.
    assert scalar(conn, "SELECT n FROM rpm.readings_seen") == 5_000
    after = describe(conn)
    # Until finalize: the old table, and the run's mirror and guards on the new one.
    retired = {k: [r for r in v if not any("rc1" in str(x) for x in r)] for k, v in after.items()}
    # Only the chunk interval changed (the ledger's own rows are not part of the schema).
    assert _without_dimensions(retired) == _without_dimensions(before)
    assert retired["hypertable_dimensions"] != before["hypertable_dimensions"]

    # Readings stored after the cutover survive a rollback (mirrored into the old table).
    conn.execute(
        "INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, "
        "patient_id, metric_id) VALUES (now(), now(), 1, 0, gen_random_uuid(), "
        "gen_random_uuid(), 1)"
    )
    assert scalar(conn, "SELECT n FROM rpm.readings_seen") == 5_001
    with pytest.raises(psycopg.errors.ObjectInUse, match="kept for rollback"):
        conn.execute("DELETE FROM rpm.readings WHERE metric_id = 2")
    rechunker.rollback("rpm", "readings")
    assert describe(conn) == before
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == 5_001
    assert dimensions(conn) == [("measured_at", "7 days")]

    # A second run, finalized: the old table is gone and so are the run's triggers.
    report = rechunker.rechunk("rpm", "readings", chunk_interval="12 hours")
    assert report.run_id == 2
    rechunker.finalize("rpm", "readings")
    final = describe(conn)
    assert _without_dimensions(final) == _without_dimensions(before)
    assert dimensions(conn) == [("measured_at", "12:00:00")]
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == 5_001
    conn.execute(
        "INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, "
        "patient_id, metric_id) VALUES (now(), now(), 1, 0, gen_random_uuid(), "
        "gen_random_uuid(), 1)"
    )
    assert scalar(conn, "SELECT max(reading_no) FROM rpm.readings") == 5_002
    states = conn.execute(
        "SELECT run_id, state, operator <> '' FROM rpm.rechunk_runs ORDER BY run_id"
    ).fetchall()
    assert states == [(1, "rolled_back", True), (2, "finalized", True)]
    # Whoever ran it (on the full edition, a superuser), everything it left belongs to the
    # owner: the table, its chunks, the rollups' views, the run's functions are all gone.
    foreign = conn.execute(
        """
        SELECT c.oid::regclass::text FROM pg_class c
        WHERE (c.relnamespace = 'rpm'::regnamespace
               OR c.oid IN (SELECT show_chunks('rpm.readings')))
          AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        UNION ALL
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'rpm'::regnamespace
          AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        """
    ).fetchall()
    assert foreign == []


def test_changes_other_than_inserts_are_refused_during_a_run(
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    seed(conn, 3_000)
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=1_000, cutover=False))
    report = rechunker.rechunk("rpm", "readings", chunk_interval="2 days")
    assert report.state == "copying"
    with pytest.raises(psycopg.errors.ObjectInUse, match="being migrated"):
        conn.execute("UPDATE rpm.readings SET value = 1 WHERE metric_id = 1")
    with pytest.raises(psycopg.errors.ObjectInUse):
        conn.execute("TRUNCATE rpm.readings")
    # Abandoned before cutover: the new table and the run's triggers go away.
    rechunker.rollback("rpm", "readings")
    assert scalar(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'readings_rc1'") == 0
    conn.execute("UPDATE rpm.readings SET value = 1 WHERE metric_id = 1")
    assert scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'rechunk%%'") == 0


def test_views_follow_the_new_table_and_other_dependents_are_refused(
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    """A plain view is re-pointed at cutover (it would otherwise keep reading the old table);
    what a swap cannot carry over is listed and refused."""
    seed(conn, 2_000)
    conn.execute(
        "CREATE VIEW rpm.readings_per_metric WITH (security_barrier) AS "
        "SELECT metric_id, count(*) AS n FROM rpm.readings GROUP BY metric_id"
    )
    conn.execute("CREATE MATERIALIZED VIEW rpm.latest AS SELECT max(measured_at) FROM rpm.readings")
    conn.execute(
        "CREATE POLICY with_readings ON rpm.alerts USING "
        "(EXISTS (SELECT FROM rpm.readings r WHERE r.patient_id = alerts.patient_id))"
    )
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=1_000))
    with pytest.raises(
        RechunkRefusedError,
        match=r"materialized view rpm\.latest; policy with_readings on rpm\.alerts",
    ):
        rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_runs") == 0

    conn.execute("DROP MATERIALIZED VIEW rpm.latest")
    conn.execute("DROP POLICY with_readings ON rpm.alerts")
    views_before = conn.execute(
        "SELECT viewname, definition FROM pg_views WHERE schemaname = 'rpm' ORDER BY 1"
    ).fetchall()
    rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
    conn.execute(
        "INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, "
        "patient_id, metric_id) VALUES (now(), now(), 1, 0, gen_random_uuid(), "
        "gen_random_uuid(), 9)"
    )
    # The view reads the new table; finalize could not drop the old one if it did not.
    rechunker.finalize("rpm", "readings")
    assert scalar(conn, "SELECT n FROM rpm.readings_per_metric WHERE metric_id = 9") == 1
    assert (
        conn.execute(
            "SELECT viewname, definition FROM pg_views WHERE schemaname = 'rpm' ORDER BY 1"
        ).fetchall()
        == views_before
    )
    options = conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = 'rpm.readings_per_metric'::regclass"
    ).fetchone()
    assert options == (["security_barrier=true"],)


def test_continuous_aggregates_need_the_catalogue_owner(conn: psycopg.Connection) -> None:
    """Moving continuous aggregates writes TimescaleDB's catalogue: the table's owner alone is
    refused up front, before a run exists, with the reason and what to do."""
    if not full_edition(conn):
        pytest.skip(
            "Apache edition: rpm.readings has no continuous aggregates (its rollups are tables "
            "behind plain views), so the re-chunk writes nothing of TimescaleDB's catalogue"
        )
    seed(conn, 1_000)
    with pytest.raises(RechunkRefusedError, match=r"rpm\.readings_1m\).*superuser"):
        Rechunker(conn).rechunk("rpm", "readings", chunk_interval="1 day")
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_runs") == 0
    assert scalar(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'readings_rc1'") == 0


def test_swaps_never_fail_a_rollup_reader(
    db_url: str, conn: psycopg.Connection, rechunk_conn: psycopg.Connection
) -> None:
    """Cutovers and rollbacks, back to back, while charts read every rollup level (views
    replaced by each swap; on the full edition, continuous aggregates moved): no read fails."""
    seed(conn, 3_000)
    readers = [RollupReader(db_url) for _ in range(3)]
    for reader in readers:
        reader.start()
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=1_000))
    for _ in range(4):
        rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
        rechunker.rollback("rpm", "readings")
    for reader in readers:
        reader.stop()
        assert reader.reads > 0
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_runs WHERE state = 'rolled_back'") == 4


def test_repartition_by_hash_of_device(
    db_url: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    pg_server: PgServer,
    debian_root: DebianRoot,
    rechunk_url: str,
) -> None:
    rows = seed(conn, 8_000)
    refused = rpmstore(
        rechunk_url,
        tmp_path / "refused.log",
        "repartition",
        "readings",
        "--partitions",
        "4",
        "--column",
        "patient_id",
    )
    assert refused.process.wait(timeout=120) == 2
    assert "unique index readings_natural_key" in refused.log.read_text()

    output = rpmstore(
        rechunk_url, tmp_path / "repartition.log", "repartition", "readings", "--partitions", "4"
    ).finish()
    assert "hash(device_id) into 4" in output
    assert dimensions(conn) == [("measured_at", "7 days"), ("device_id", "4")]
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == rows
    # Every source chunk's rows now live in several hash partitions of the same week.
    assert (
        scalar(
            conn,
            "SELECT max(n) FROM (SELECT count(*) AS n FROM rpm.rechunk_lineage "
            "GROUP BY source_chunk) c",
        )
        > 1
    )
    status = rpmstore(rechunk_url, tmp_path / "status.log", "rechunk", "status").finish()
    assert "repartition rpm.readings" in status and "cut_over" in status
    rpmstore(rechunk_url, tmp_path / "finalize.log", "rechunk", "finalize", "readings").finish()
    amcheck(pg_server, debian_root, db_url)


def test_nonsense_is_refused_with_a_reason(
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    rechunker = Rechunker(rechunk_conn)
    with pytest.raises(RechunkRefusedError, match="chunk-interval"):
        rechunker.rechunk("rpm", "readings", chunk_interval="one fortnight")
    with pytest.raises(RechunkRefusedError, match="nothing to do"):
        rechunker.rechunk("rpm", "readings", chunk_interval="168 hours")
    with pytest.raises(RechunkRefusedError, match="not a hypertable"):
        rechunker.rechunk("rpm", "patients", chunk_interval="1 day")
    with pytest.raises(RechunkRefusedError, match="no re-chunk"):
        rechunker.rollback("rpm", "readings")
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_runs") == 0


def test_cutover_waits_briefly_for_the_lock_and_gives_up_cleanly(
    db_url: str,
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    """A transaction holding the live table makes the cutover fail after its short
    lock_timeout attempts, leaving the run intact; once it ends, the rerun cuts over."""
    rows = seed(conn, 4_000)
    options = Options(batch_rows=1_000, lock_timeout_s=0.2, lock_attempts=2)
    Rechunker(rechunk_conn, options=Options(batch_rows=1_000, cutover=False)).rechunk(
        "rpm", "readings", chunk_interval="1 day"
    )
    with psycopg.connect(db_url) as holder:
        holder.execute("LOCK TABLE rpm.readings IN ROW EXCLUSIVE MODE")  # like an ingest batch
        with pytest.raises(LockBusyError, match="2 attempts"):
            Rechunker(rechunk_conn, options=options).rechunk(
                "rpm", "readings", chunk_interval="1 day"
            )
        holder.rollback()
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_runs WHERE state = 'copying'") == 1
    assert dimensions(conn) == [("measured_at", "7 days")]
    report = Rechunker(rechunk_conn, options=options).rechunk(
        "rpm", "readings", chunk_interval="1 day"
    )
    assert report.state == "cut_over"
    assert report.copied_rows == 0  # nothing copied twice: the ledger said it was done
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == rows


def test_a_damaged_copy_is_never_cut_over(
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    """Rows lost from the new table behind the ledger's back show in the reconciliation,
    and the cutover is refused."""
    seed(conn, 4_000)
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=1_000, cutover=False))
    rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
    conn.execute(
        "DELETE FROM rpm.readings_rc1 WHERE measured_at < (SELECT min(measured_at) + "
        "interval '1 hour' FROM rpm.readings_rc1)"
    )
    with pytest.raises(VerificationError, match="rows per day differ"):
        Rechunker(rechunk_conn).rechunk("rpm", "readings", chunk_interval="1 day")
    assert dimensions(conn) == [("measured_at", "7 days")]
    differing = conn.execute(
        "SELECT old_rows - new_rows FROM rpm.rechunk_reconciliation WHERE difference <> 0"
    ).fetchall()
    assert differing and all(d[0] > 0 for d in differing)
    rechunker.rollback("rpm", "readings")
    assert scalar(conn, "SELECT count(*) FROM rpm.readings") == 4_000


def test_generic_over_hypertables_with_key_constraints(
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    """Another hypertable, in another schema: a primary key and a unique constraint (indexes
    behind constraints, swapped by constraint name), and a view over it re-pointed."""
    conn.execute(
        """
        CREATE SCHEMA lab;
        CREATE TABLE lab.samples (
            taken_at timestamptz NOT NULL,
            sample_no bigint NOT NULL,
            patient_id uuid NOT NULL,
            result numeric(8, 2),
            CONSTRAINT samples_pkey PRIMARY KEY (patient_id, taken_at),
            CONSTRAINT samples_once UNIQUE (sample_no, taken_at)
        );
        SELECT create_hypertable('lab.samples', by_range('taken_at', interval '30 days'));
        CREATE VIEW lab.sample_counts AS SELECT patient_id, count(*) FROM lab.samples GROUP BY 1;
        """
    )
    conn.execute(
        """
        INSERT INTO lab.samples
        SELECT %(start)s + i * interval '20 minutes', i, md5('p' || i %% 7)::uuid, i / 10.0
        FROM generate_series(0, 1999) i
        """,
        {"start": SEED_START},
    )
    schemas = {"schemas": ["lab"]}
    tables_before = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = ANY(%(schemas)s) ORDER BY 1",
        schemas,
    ).fetchall()
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=500))
    report = rechunker.rechunk("lab", "samples", chunk_interval="1 day")
    assert report.state == "cut_over"
    rechunker.finalize("lab", "samples")
    assert (
        conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = ANY(%(schemas)s) "
            "ORDER BY 1",
            schemas,
        ).fetchall()
        == tables_before
    )
    constraints = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'lab.samples'::regclass ORDER BY 1"
    ).fetchall()
    assert constraints == [("samples_once",), ("samples_pkey",)]
    assert scalar(conn, "SELECT sum(count) FROM lab.sample_counts") == 2_000
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO lab.samples SELECT * FROM lab.samples LIMIT 1")


# -- rollups through cutover, rollback and finalize ---------------------------------------------

RollupKey = tuple[uuid.UUID, int, datetime]  # patient, metric, bucket start
# count, sum, min, max, last value, last time. Seeded and ingested values are whole numbers,
# so sums are exact in any order and buckets compare with ==.
RollupRow = tuple[int, float, float, float, float, datetime]
Rollups = dict[str, dict[RollupKey, RollupRow]]
HISTORY_START = NOW - timedelta(days=60)


def rollups(conn: psycopg.Connection) -> Rollups:
    """What rpm.readings_1m, _1h and _1d answer (materialized buckets and real-time tail)."""
    answer: Rollups = {}
    for level in LEVELS:
        query = psycopg.sql.SQL(
            "SELECT patient_id, metric_id, bucket_start, reading_count, value_sum, value_min, "
            "value_max, last_value, last_at FROM {}"
        ).format(psycopg.sql.Identifier("rpm", f"readings_{level}"))
        answer[level] = {
            (p, m, b): (int(c), s, lo, hi, last, at)
            for p, m, b, c, s, lo, hi, last, at in conn.execute(query).fetchall()
        }
    return answer


def raw_oracle(conn: psycopg.Connection) -> Rollups:
    """The same rollups computed in Python from every raw reading stored."""
    rows = conn.execute("SELECT patient_id, metric_id, measured_at, value FROM rpm.readings")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    points: dict[str, dict[RollupKey, list[tuple[datetime, float]]]] = {
        level: {} for level in LEVELS
    }
    for patient, metric, at, value in rows.fetchall():
        for level, width in ROLLUP_WIDTHS.items():
            start = epoch + ((at - epoch) // width) * width
            points[level].setdefault((patient, metric, start), []).append((at, value))
    answer: Rollups = {}
    for name, buckets in points.items():
        answer[name] = {}
        for key, found in buckets.items():
            values = [v for _at, v in found]
            last_at, last = max(found)  # the latest; on a tie the larger value
            answer[name][key] = (len(values), sum(values), min(values), max(values), last, last_at)
    return answer


def split(answer: Rollups, raw_from: datetime) -> tuple[Rollups, Rollups]:
    """(buckets older than every raw reading still stored, the rest)."""
    older = {lv: {k: v for k, v in rows.items() if k[2] < raw_from} for lv, rows in answer.items()}
    rest = {lv: {k: v for k, v in rows.items() if k[2] >= raw_from} for lv, rows in answer.items()}
    return older, rest


def ingest_late_and_fresh(db_url: str, n: int) -> None:
    """Through the group committer, as devices send them (so both editions record the
    invalidations their refresh needs): readings 10 and 3 days late into buckets already
    materialized, and fresh ones."""
    device = uuid.uuid5(uuid.NAMESPACE_OID, f"rollup-device-{n}")
    patient = uuid.uuid5(uuid.NAMESPACE_OID, "patient-of-rechunk-rollups")
    readings = [
        ValidatedReading(at, device, patient, 2, 300.0 + n * 10 + k, at)
        for k, at in enumerate(
            (
                NOW - timedelta(days=10, minutes=7 * n, seconds=-23),
                NOW - timedelta(days=3, minutes=3 * n, seconds=-41),
                NOW - timedelta(minutes=2, seconds=n),
            )
        )
    ]

    async def main() -> None:
        async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
            committer = GroupCommitter(pool, source="http", max_delay_s=0.001)
            await committer.start()
            try:
                outcome = await committer.submit(
                    IngestRequest(
                        readings=readings,
                        reading_indexes=list(range(len(readings))),
                        quarantine=(),
                        raw_payload=b"{}",
                        received_at=time.time(),
                    )
                )
            finally:
                await committer.stop()
            assert not outcome.conflicts and not outcome.refused and not outcome.duplicates

    asyncio.run(main())


def refreshed(conn: psycopg.Connection, raw_horizon: timedelta = DEFAULT_RAW_HORIZON) -> None:
    """Materialize what the edition's refresh would, never before ``now() - raw_horizon``."""
    if not full_edition(conn):
        assert refresh_rollups(conn, raw_horizon=raw_horizon).ran
        return
    # TimescaleDB's own refresh, as the policies run it (the refresher would first replace the
    # policies, which is not what this test is about).
    for level in LEVELS:
        conn.execute(
            "CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, NULL)",
            (f"rpm.readings_{level}", refresh_start(raw_horizon)),
        )


def refresh_start(raw_horizon: timedelta) -> datetime:
    """The first UTC midnight after now() - raw_horizon: the Apache refresher's horizon start,
    and where :func:`refreshed` starts on the full edition (nothing before it is refreshed)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - raw_horizon + timedelta(days=1)


def aggregates_info(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT hypertable_schema, hypertable_name, view_name "
        "FROM timescaledb_information.continuous_aggregates ORDER BY view_name"
    ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def raw_keyed_catalogue(conn: psycopg.Connection) -> tuple[int | None, int, int]:
    """What TimescaleDB keys by the raw hypertable rpm.readings is now (full edition): its
    invalidation threshold, its unprocessed invalidations, and the aggregates reading it."""
    conn.execute("SET search_path = _timescaledb_catalog")
    row = conn.execute(
        """
        SELECT (SELECT watermark FROM continuous_aggs_invalidation_threshold
                WHERE hypertable_id = h.id),
               (SELECT count(*) FROM continuous_aggs_hypertable_invalidation_log
                WHERE hypertable_id = h.id),
               (SELECT count(*) FROM continuous_agg WHERE raw_hypertable_id = h.id)
        FROM hypertable h
        WHERE h.schema_name = 'rpm' AND h.table_name = 'readings'
        """
    ).fetchone()
    conn.execute("RESET search_path")
    assert row is not None
    return (row[0], int(row[1]), int(row[2]))


def test_rollups_and_rolled_up_history_survive_cutover_rollback_and_finalize(
    db_url: str,
    conn: psycopg.Connection,
    rechunk_conn: psycopg.Connection,
) -> None:
    """On both editions rpm.readings_1m/1h/1d answer the same before and after a cutover and a
    rollback, stay equal to an oracle from raw after refreshes that process readings stored
    before, between and after the swaps, and buckets older than any raw reading (their chunks
    dropped by retention: they exist only in the rollups) are never lost. On the full edition
    these are hierarchical continuous aggregates, moved to the new table by each swap."""
    tsl = full_edition(conn)
    if tsl:
        # Deterministic answers between the test's own refreshes: the 1-minute aggregate's
        # policy is paused, so no late reading reaches the rollups behind the test's back (the
        # coarser levels roll up its materialized buckets). Only that one: TimescaleDB 2.22's
        # alter_job refuses any policy of a hierarchical aggregate ("multiple refresh policies
        # are not supported"), its own included.
        conn.execute(
            "SELECT alter_job(j.id, scheduled => false) FROM _timescaledb_config.bgw_job j "
            "JOIN _timescaledb_catalog.continuous_agg ca ON ca.mat_hypertable_id = j.hypertable_id "
            "WHERE ca.parent_mat_hypertable_id IS NULL "
            "AND j.proc_name = 'policy_refresh_continuous_aggregate'"
        )
    jobs = conn.execute(
        "SELECT job_id, proc_name, hypertable_schema, hypertable_name "
        "FROM timescaledb_information.jobs ORDER BY job_id"
    ).fetchall()
    seed(conn, 6_000)
    conn.execute(
        """
        INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id,
                                  patient_id, metric_id)
        SELECT %(start)s + i * interval '7 minutes', now(), 50 + i %% 30, 0,
               md5('device' || i %% 5)::uuid, md5('patient' || i %% 5)::uuid, 1 + i %% 3
        FROM generate_series(0, 2999) i
        """,
        {"start": HISTORY_START},
    )
    # Everything rolled up, then the oldest raw chunks dropped as retention would: their
    # buckets now exist only in the rollups.
    refreshed(conn, raw_horizon=timedelta(days=90))
    dropped = conn.execute(
        "SELECT count(*) FROM drop_chunks('rpm.readings', older_than => %s::timestamptz)",
        (NOW - timedelta(days=40),),
    ).fetchone()
    assert dropped is not None and dropped[0] > 0
    first = conn.execute("SELECT min(measured_at) FROM rpm.readings").fetchone()
    assert first is not None
    raw_from = first[0].replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    history, _ = split(rollups(conn), raw_from)
    assert all(history[level] for level in LEVELS), "no rolled-up history older than raw"
    assert split(rollups(conn), raw_from)[1] == split(raw_oracle(conn), raw_from)[1]

    def assert_rollups_correct() -> None:
        older, rest = split(rollups(conn), raw_from)
        assert older == history, "rolled-up history older than raw data changed"
        assert rest == split(raw_oracle(conn), raw_from)[1]

    # Run 1: copied and verified; readings arrive (dual-written) before the cutover, and are
    # refreshed only after it, through invalidations recorded against the old table.
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=2_000, cutover=False))
    rechunker.rechunk("rpm", "readings", chunk_interval="1 day")
    ingest_late_and_fresh(db_url, 1)
    before = rollups(conn)
    raw_keyed = raw_keyed_catalogue(conn) if tsl else None
    aggregates = aggregates_info(conn)
    Rechunker(rechunk_conn, options=Options(batch_rows=2_000)).rechunk(
        "rpm", "readings", chunk_interval="1 day"
    )
    assert rollups(conn) == before, "the cutover changed what the rollups answer"
    if tsl:
        # The catalogue statements of the swap: what was keyed by the old table's hypertable
        # id (the late readings' invalidations among it) is keyed by the new one's, unchanged.
        assert raw_keyed is not None and raw_keyed[1] > 0
        assert raw_keyed_catalogue(conn) == raw_keyed
        # As TimescaleDB's public view shows them: unchanged, the 1-minute one on rpm.readings.
        assert aggregates_info(conn) == aggregates
        assert ("rpm", "readings", "readings_1m") in aggregates
        readers = conn.execute(
            "SELECT ca.user_view_name::text, h.schema_name || '.' || h.table_name "
            "FROM _timescaledb_catalog.continuous_agg ca "
            "JOIN _timescaledb_catalog.hypertable h ON h.id = ca.raw_hypertable_id "
            "WHERE ca.parent_mat_hypertable_id IS NULL"
        ).fetchall()
        assert readers == [("readings_1m", "rpm.readings")]
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger "
            "WHERE tgname = 'ts_cagg_invalidation_trigger' AND tgrelid::regclass::text "
            "LIKE 'rpm.readings%%'"
        ).fetchall()
        assert triggers == [("rpm.readings",)]
    assert dimensions(conn) == [("measured_at", "1 day")]
    refreshed(conn)
    assert_rollups_correct()

    # Readings stored after the cutover (mirrored into the old table), refreshed only after
    # the rollback: the invalidations follow the aggregates back.
    ingest_late_and_fresh(db_url, 2)
    before = rollups(conn)
    rechunker.rollback("rpm", "readings")
    assert rollups(conn) == before, "the rollback changed what the rollups answer"
    assert dimensions(conn) == [("measured_at", "7 days")]
    refreshed(conn)
    assert_rollups_correct()

    # Run 2, a repartition, finalized: the old table is dropped, the rollups stay.
    ingest_late_and_fresh(db_url, 3)
    rechunker = Rechunker(rechunk_conn, options=Options(batch_rows=2_000))
    rechunker.repartition("rpm", "readings", partitions=4)
    rechunker.finalize("rpm", "readings")
    assert dimensions(conn) == [("measured_at", "7 days"), ("device_id", "4")]
    ingest_late_and_fresh(db_url, 4)
    refreshed(conn)
    assert_rollups_correct()

    # The refresh policies are the same jobs, on the same aggregates.
    assert (
        conn.execute(
            "SELECT job_id, proc_name, hypertable_schema, hypertable_name "
            "FROM timescaledb_information.jobs ORDER BY job_id"
        ).fetchall()
        == jobs
    )
    # Lineage: both runs complete in the ledger.
    assert conn.execute(
        "SELECT run_id, kind, state FROM rpm.rechunk_runs ORDER BY run_id"
    ).fetchall() == [(1, "rechunk", "rolled_back"), (2, "repartition", "finalized")]
    assert scalar(conn, "SELECT count(*) FROM rpm.rechunk_chunks WHERE state <> 'verified'") == 0
    assert (
        scalar(conn, "SELECT count(*) FROM rpm.rechunk_reconciliation WHERE difference <> 0") == 0
    )
    stored = scalar(conn, "SELECT count(*) FROM rpm.readings")
    # Run 2 started after the third batch of late readings and before the fourth (3 each).
    assert scalar(conn, "SELECT sum(row_count) FROM rpm.rechunk_lineage WHERE run_id = 2") == (
        stored - 3
    )
