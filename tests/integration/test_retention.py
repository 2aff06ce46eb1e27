"""Retention on a real TimescaleDB: plan, archive -> drop -> restore, holds, rollups, faults."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from jobs.rollups import refresh_rollups
from retention.errors import RechunkInProgressError
from retention.holds import place_hold, release_hold
from retention.plan import build_plan
from retention.restore import restore_range
from retention.run import RetentionOptions, run_retention
from rpmstore.cli import main
from rpmstore.localstack.debian_root import PG_BIN, DebianRoot
from schema.horizon import fetch_raw_horizon
from tests.conftest import PgServer
from tests.integration.retention_data import (
    AS_OF,
    OLD,
    RECENT,
    STORED_ROWS,
    chunk_ranges,
    continuous_aggregates,
    count_between,
    insert_readings,
    leave_rollups_unmaterialized,
    materialize_rollups,
    missing_rollup_targets,
    new_patient,
    rollup_1m_storage,
    rollup_1m_target,
)

HORIZON = AS_OF - timedelta(days=90)


def options(archive: Path | str, **overrides: object) -> RetentionOptions:
    values: dict[str, object] = {"archive_url": str(archive), "operator": "dr-ops", "as_of": AS_OF}
    values.update(overrides)
    return RetentionOptions(**values)  # type: ignore[arg-type]


def ledger(conn: psycopg.Connection, run_id: int) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT action, status, row_count, rows_held, reason, archive_uri IS NOT NULL "
        "FROM rpm.retention_ledger WHERE run_id = %s ORDER BY range_start",
        (run_id,),
    ).fetchall()


def run_row(conn: psycopg.Connection, run_id: int) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT operator, outcome, rows_archived, rows_dropped, rows_held, detail, "
        "finished_at IS NOT NULL FROM rpm.retention_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def amcheck_clean(pg_server: PgServer, debian_root: DebianRoot, db_url: str) -> str:
    """pg_amcheck --heapallindexed over the whole database (tables, chunks, indexes)."""
    database = str(psycopg.conninfo.conninfo_to_dict(db_url)["dbname"])
    admin_url = pg_server.url(database, admin=True)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    checked = debian_root.run(
        debian_root.account("postgres"),
        [f"{PG_BIN}/pg_amcheck", "--heapallindexed", "--no-dependent-toast", admin_url],
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return checked.stdout


def _insert_data(conn: psycopg.Connection) -> dict[str, uuid.UUID]:
    patient, held = new_patient(conn), new_patient(conn)
    insert_readings(conn, patient=patient, start=OLD, count=3000)
    insert_readings(conn, patient=held, start=OLD + timedelta(days=3), count=200)
    insert_readings(conn, patient=patient, start=RECENT, count=100)
    return {"patient": patient, "held": held}


@pytest.fixture
def data(conn: psycopg.Connection) -> dict[str, uuid.UUID]:
    """Four old weeks (due), one held patient among them, and recent readings (kept), all
    rolled up."""
    patients = _insert_data(conn)
    materialize_rollups(conn, AS_OF)
    return patients


@pytest.fixture
def unrolled_data(conn: psycopg.Connection) -> dict[str, uuid.UUID]:
    """The same readings before the rollups have materialized any of them."""
    patients = _insert_data(conn)
    leave_rollups_unmaterialized(conn)
    return patients


def test_plan_lists_due_chunks_held_rows_and_missing_targets(
    db_url: str,
    conn: psycopg.Connection,
    data: dict[str, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    place_hold(conn, data["held"], reason="litigation 2026-17", by="counsel")
    plan = build_plan(conn, as_of=AS_OF)
    due = plan.due
    assert due and all(s.action == "drop_chunk" and s.end <= HORIZON for s in due)
    assert sum(s.row_count for s in due) == count_between(conn, OLD - timedelta(days=7), HORIZON)
    assert sum(s.held_rows for s in due) == 400
    assert all(s.bytes > 0 and s.chunks for s in due)
    assert plan.held_patients == (str(data["held"]),)
    missing_1m, missing_1h = missing_rollup_targets(conn)
    assert any(missing_1m in note for note in plan.notes)
    if continuous_aggregates(conn):
        assert any(
            "for every aggregate's materialization watermark (" in note
            and all(f"rpm.readings_{level} 2026-" in note for level in ("1m", "1h", "1d"))
            for note in plan.notes
        ), plan.notes
    # A dry run changes nothing.
    assert conn.execute("SELECT count(*) FROM rpm.retention_runs").fetchone() == (0,)

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MQTT_URL", "mqtt://unused@127.0.0.1:1")
    # No local-stack state: the command must take the URL above and nothing else.
    monkeypatch.setenv("RPMSTORE_INSTANCE", f"retention-test-{uuid.uuid4().hex[:8]}")
    assert main(["retention", "plan", "--as-of", AS_OF.isoformat()]) == 0
    out = capsys.readouterr().out
    assert f"rpm.readings: chunks ending on or before {HORIZON.isoformat()} are due" in out
    assert "patients under legal hold: 1" in out
    assert f"total: {len(due)} slices due, {sum(s.row_count for s in due)} rows" in out
    assert "400 held rows kept" in out
    assert f"note: {missing_1h}" in out


@pytest.mark.usefixtures("data")
def test_archive_drop_restore_round_trip_gives_identical_rows(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    before = conn.execute(STORED_ROWS).fetchall()
    old_rows = count_between(conn, OLD - timedelta(days=7), HORIZON)
    result = run_retention(conn, options(tmp_path))
    assert result.outcome == "succeeded"
    assert (result.rows_archived, result.rows_dropped, result.rows_held) == (old_rows, old_rows, 0)
    assert count_between(conn, OLD - timedelta(days=7), HORIZON) == 0
    assert all(end > HORIZON for _, end in chunk_ranges(conn)), "due chunks are gone"
    assert run_row(conn, result.run_id) == (
        "dr-ops",
        "succeeded",
        old_rows,
        old_rows,
        0,
        f"{len(result.slices)} dropped",
        True,
    )
    entries = ledger(conn, result.run_id)
    assert {(e[0], e[1], e[5]) for e in entries} == {("drop_chunk", "dropped", True)}

    # Each archive: a Parquet file and a manifest that agree with the ledger.
    first = result.slices[0].archived
    assert first is not None
    manifest = json.loads(Path(first.manifest_uri).read_text())
    assert manifest["row_count"] == first.row_count == pq.read_table(first.archive_uri).num_rows
    assert manifest["file_sha256"] == first.file_sha256
    assert manifest["range_start"] == result.slices[0].work.start.isoformat()
    assert manifest["operator"] == "dr-ops"

    restored = restore_range(conn, start=OLD - timedelta(days=30), end=AS_OF, operator="dr-ops")
    assert (restored.outcome, restored.rows_read, restored.rows_restored) == (
        "succeeded",
        old_rows,
        old_rows,
    )
    assert conn.execute(STORED_ROWS).fetchall() == before
    again = restore_range(conn, start=OLD - timedelta(days=30), end=AS_OF, operator="dr-ops")
    assert (again.rows_read, again.rows_restored) == (old_rows, 0), "restoring twice is harmless"
    assert conn.execute(STORED_ROWS).fetchall() == before

    # A partial range restores only its rows. The restored rows are rows the rollups have not
    # seen since (TSL logs them as invalidations): the refresher runs before they go again.
    materialize_rollups(conn, AS_OF)
    result = run_retention(conn, options(tmp_path / "second"))
    assert result.outcome == "succeeded"
    day = OLD + timedelta(days=8)
    part = restore_range(conn, start=day, end=day + timedelta(days=1), operator="dr-ops")
    assert part.rows_restored == count_between(conn, day, day + timedelta(days=1)) == 144 * 2


def test_legal_hold_keeps_held_patients_rows(
    conn: psycopg.Connection, data: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    hold = place_hold(conn, data["held"], reason="complaint 42", by="counsel")
    held_before = conn.execute(
        "SELECT measured_at, received_at, value, batch_id, device_id, patient_id, metric_id, "
        "utc_offset_minutes, client_reading_id FROM rpm.readings WHERE patient_id = %s "
        "ORDER BY device_id, metric_id, measured_at",
        (data["held"],),
    ).fetchall()
    assert len(held_before) == 400
    result = run_retention(conn, options(tmp_path))
    assert result.outcome == "succeeded"
    assert result.rows_held == 400
    assert (
        conn.execute(
            "SELECT measured_at, received_at, value, batch_id, device_id, patient_id, metric_id, "
            "utc_offset_minutes, client_reading_id FROM rpm.held_readings "
            "ORDER BY device_id, metric_id, measured_at"
        ).fetchall()
        == held_before
    )
    assert conn.execute("SELECT DISTINCT held_by_run FROM rpm.held_readings").fetchall() == [
        (result.run_id,)
    ]
    assert sum(int(e[3]) for e in ledger(conn, result.run_id)) == 400  # type: ignore[call-overload]
    assert run_row(conn, result.run_id)[4] == 400
    # Releasing the hold keeps its record and the rows already set aside.
    release_hold(conn, hold, reason="case closed", by="counsel")
    assert conn.execute(
        "SELECT released_by, release_reason FROM rpm.legal_holds WHERE hold_id = %s", (hold,)
    ).fetchone() == ("counsel", "case closed")
    assert conn.execute("SELECT count(*) FROM rpm.held_readings").fetchone() == (400,)


def test_pending_rollup_invalidations_block_the_drop(
    conn: psycopg.Connection, data: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    late = OLD + timedelta(days=10)
    conn.execute(
        "INSERT INTO rpm.rollup_invalidations (patient_id, metric_id, range_start, range_end, "
        "batch_id) VALUES (%s, 1, %s, %s, 1)",
        (data["patient"], late, late + timedelta(hours=1)),
    )
    plan = build_plan(conn, as_of=AS_OF)
    blocked = [s for s in plan.slices if s.blocked]
    assert len(blocked) == 1
    assert blocked[0].start <= late < blocked[0].end
    assert "1 pending rollup invalidations overlap" in (blocked[0].blocked or "")
    rows_there = count_between(conn, blocked[0].start, blocked[0].end)

    result = run_retention(conn, options(tmp_path))
    assert result.outcome == "partial"
    assert count_between(conn, blocked[0].start, blocked[0].end) == rows_there > 0
    skipped = [e for e in ledger(conn, result.run_id) if e[1] == "skipped"]
    assert len(skipped) == 1 and "refresh the rollups first" in str(skipped[0][4])
    assert "rollups incomplete" in str(run_row(conn, result.run_id)[5])

    # Once the refresher has consumed the invalidation, the next run drops the slice.
    conn.execute("DELETE FROM rpm.rollup_invalidations")
    assert run_retention(conn, options(tmp_path)).outcome == "succeeded"
    assert count_between(conn, blocked[0].start, blocked[0].end) == 0


@pytest.mark.usefixtures("unrolled_data")
def test_raw_drops_wait_for_the_rollups(conn: psycopg.Connection, tmp_path: Path) -> None:
    """Raw slices past what the rollups have materialized stay (rollup tables or aggregates)."""
    plan = build_plan(conn, as_of=AS_OF)
    assert plan.slices
    assert all("has rolled up to nothing yet" in (s.blocked or "") for s in plan.slices)
    middle = plan.slices[1].end
    materialize_rollups(conn, middle)
    result = run_retention(conn, options(tmp_path))
    assert [s.status for s in result.slices] == ["dropped", "dropped"] + ["skipped"] * (
        len(result.slices) - 2
    )
    assert all("rollups incomplete" in (s.reason or "") for s in result.slices[2:])
    assert count_between(conn, OLD - timedelta(days=7), middle) == 0
    assert count_between(conn, middle, HORIZON) > 0
    materialize_rollups(conn, AS_OF)
    assert run_retention(conn, options(tmp_path / "again")).outcome == "succeeded"
    assert count_between(conn, OLD - timedelta(days=7), HORIZON) == 0


def test_each_editions_own_rollup_bookkeeping_gates_the_drop(
    conn: psycopg.Connection, data: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    """Below the overall mark, each edition's record of what is not rolled up yet holds slices
    back. Apache: the lesser of ingest's invalidation threshold and the refresher's progress.
    TSL: TimescaleDB's log of late rows that no refresh has seen yet."""
    middle = build_plan(conn, as_of=AS_OF).due[1].end
    if continuous_aggregates(conn):
        late = middle + timedelta(hours=1)
        insert_readings(conn, patient=data["patient"], start=late, count=3)
        expected = "pending rollup invalidations overlap"
    else:
        # The refresher's progress stays at AS_OF; ingest's threshold says middle.
        conn.execute("UPDATE rpm.rollup_watermark SET invalidation_threshold = %s", (middle,))
        expected = f"the refresher has rolled up to {middle.isoformat()}"
    plan = build_plan(conn, as_of=AS_OF)
    blocked = [s for s in plan.slices if s.blocked]
    assert blocked and blocked[0].start == middle
    assert all(s.start >= middle and expected in (s.blocked or "") for s in blocked)
    result = run_retention(conn, options(tmp_path))
    assert result.outcome == "partial"
    assert count_between(conn, OLD - timedelta(days=7), middle) == 0
    assert count_between(conn, blocked[0].start, blocked[0].end) > 0
    materialize_rollups(conn, AS_OF)
    assert run_retention(conn, options(tmp_path / "again")).outcome == "succeeded"
    assert count_between(conn, OLD - timedelta(days=7), HORIZON) == 0


@pytest.mark.usefixtures("data")
def test_unwritable_archive_leaves_data_in_place_and_says_why(
    conn: psycopg.Connection,
    tmp_path: Path,
    db_url: str,
    pg_server: PgServer,
    debian_root: DebianRoot,
) -> None:
    before = conn.execute(STORED_ROWS).fetchall()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive folder should be")
    result = run_retention(conn, options(blocker / "archive"))
    assert result.outcome == "failed"
    assert conn.execute(STORED_ROWS).fetchall() == before
    entries = ledger(conn, result.run_id)
    assert entries and all(e[1] == "failed" for e in entries)
    assert all("archive failed, nothing dropped" in str(e[4]) for e in entries)
    assert all("not-a-folder" in str(e[4]) for e in entries)
    operator, outcome, archived, dropped, _, detail, finished = run_row(conn, result.run_id)
    assert (operator, outcome, archived, dropped, finished) == ("dr-ops", "failed", 0, 0, True)
    assert "archive failed" in str(detail)
    # The next run with a working archive does the job; nothing was lost in between.
    assert run_retention(conn, options(tmp_path / "ok")).outcome == "succeeded"
    amcheck_clean(pg_server, debian_root, db_url)


def test_metric_class_kept_shorter_than_its_table_is_deleted_after_archive(
    conn: psycopg.Connection, data: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    """Steps (class 'activity') kept 14 days: their rows go from chunks that stay."""
    conn.execute(
        "INSERT INTO rpm.retention_policies (target_schema, target_table, metric_class, keep, "
        "kind) VALUES ('rpm', 'readings', 'activity', interval '14 days', 'raw')"
    )
    insert_readings(conn, patient=data["patient"], start=RECENT, count=100, metric_ids=(12,))
    insert_readings(conn, patient=data["held"], start=RECENT, count=10, metric_ids=(12,))
    materialize_rollups(conn, AS_OF)  # the steps are rolled up before they go
    hold = place_hold(conn, data["held"], reason="audit", by="counsel")
    plan = build_plan(conn, as_of=AS_OF)
    deletes = [s for s in plan.slices if s.action == "delete_rows"]
    assert [(s.metric_class, s.row_count, s.held_rows) for s in deletes] == [("activity", 100, 10)]
    before = conn.execute(STORED_ROWS).fetchall()

    result = run_retention(conn, options(tmp_path))
    assert result.outcome == "succeeded"
    steps = conn.execute(
        "SELECT patient_id, count(*) FROM rpm.readings WHERE metric_id = 12 GROUP BY 1"
    ).fetchall()
    assert steps == [(data["held"], 10)], "held patients' rows stay in place"
    assert count_between(conn, RECENT, AS_OF) == 200 + 10, "other metrics untouched"
    release_hold(conn, hold, reason="done", by="counsel")
    restore_range(conn, start=RECENT, end=AS_OF, operator="dr-ops")
    restore_range(conn, start=OLD - timedelta(days=30), end=HORIZON, operator="dr-ops")
    assert conn.execute(STORED_ROWS).fetchall() == before


def test_class_deletes_never_erase_rolled_up_history(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    """Rows of a class kept 14 days, 20 days old, already rolled up by the real refresher: after
    retention and another refresh their rollups are still there, on either edition. Apache's
    refresher recomputes only invalidated buckets, so the rows are deleted; TimescaleDB would
    recompute the buckets of deleted rows inside its refresh window (30 days), so there the
    rows wait until they are older than that."""
    conn.execute(
        "INSERT INTO rpm.retention_policies (target_schema, target_table, metric_class, keep, "
        "kind) VALUES ('rpm', 'readings', 'activity', interval '14 days', 'raw')"
    )
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    patient = new_patient(conn)
    insert_readings(
        conn, patient=patient, start=now - timedelta(days=20), count=30, metric_ids=(1, 12)
    )
    steps = (
        "SELECT count(*), sum(reading_count)::int FROM rpm.readings_1m "
        "WHERE patient_id = %s AND metric_id = 12"
    )
    refresh_rollups(conn)
    assert conn.execute(steps, (patient,)).fetchone() == (30, 30)

    result = run_retention(conn, options(tmp_path, as_of=now))
    deletes = [s for s in result.slices if s.work.action == "delete_rows"]
    assert deletes and sum(s.work.row_count for s in deletes) == 30  # one slice per chunk
    if continuous_aggregates(conn):
        assert all(s.status == "skipped" for s in deletes)
        assert all("next refresh erase their rollups" in (s.reason or "") for s in deletes)
        assert count_between(conn, now - timedelta(days=21), now) == 60
    else:
        assert all(s.status == "deleted" for s in deletes)
        assert count_between(conn, now - timedelta(days=21), now) == 30
    refresh_rollups(conn)
    assert conn.execute(steps, (patient,)).fetchone() == (30, 30)


def test_raw_horizon_for_ingest(db_url: str, conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT rpm.readings_retention_horizon(NULL, %s)", (AS_OF,)).fetchone()
    assert row == (HORIZON,)
    conn.execute(
        "INSERT INTO rpm.retention_policies (target_schema, target_table, metric_class, keep, "
        "kind) VALUES ('rpm', 'readings', 'body_measurements', interval '5 years', 'raw')"
    )
    weight = conn.execute(
        "SELECT rpm.readings_retention_horizon(8::smallint, %s), "
        "rpm.readings_retention_horizon(4::smallint, %s), "
        "rpm.readings_retention_horizon(NULL, %s)",
        (AS_OF, AS_OF, AS_OF),
    ).fetchone()
    assert weight is not None
    five_years = AS_OF.replace(year=AS_OF.year - 5)
    assert weight == (five_years, HORIZON, five_years)

    async def fetch() -> tuple[object, object]:
        connection = await asyncpg.connect(db_url)
        try:
            now = await connection.fetchval("SELECT now() - interval '5 years'")
            return await fetch_raw_horizon(connection), now
        finally:
            await connection.close()

    horizon, expected = asyncio.run(fetch())
    assert horizon is not None and expected is not None
    assert abs(horizon - expected) < timedelta(minutes=5)  # type: ignore[operator]


@pytest.mark.usefixtures("data")
def test_command_line_run_hold_and_restore(
    db_url: str,
    conn: psycopg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("MQTT_URL", "mqtt://unused@127.0.0.1:1")
    monkeypatch.setenv("RPMSTORE_INSTANCE", f"retention-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("RPMSTORE_RETENTION_OPERATOR", "night-shift")
    patient = new_patient(conn)
    assert main(["retention", "hold", "place", str(patient), "--reason", "subpoena"]) == 0
    assert main(["retention", "hold", "list"]) == 0
    out = capsys.readouterr().out
    assert f"on patient {patient}" in out
    assert "active\tplaced" in out and "by night-shift: subpoena" in out

    before = conn.execute(STORED_ROWS).fetchall()
    as_of = AS_OF.isoformat()
    code = main(["retention", "run", "--as-of", as_of, "--archive-url", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert ": succeeded;" in out and "dropped; archive " in out
    row = conn.execute("SELECT operator, outcome FROM rpm.retention_runs").fetchone()
    assert row == ("night-shift", "succeeded")

    start = (OLD - timedelta(days=30)).isoformat()
    assert main(["archive", "restore", "--start", start, "--end", as_of]) == 0
    assert ", 0 already present" in capsys.readouterr().out
    assert conn.execute(STORED_ROWS).fetchall() == before

    # Once the refresher has seen the restored weeks, they are due again: archived again,
    # dropped again.
    materialize_rollups(conn, AS_OF)
    code = main(["retention", "run", "--as-of", as_of, "--archive-url", str(tmp_path / "x")])
    assert code == 0
    assert "succeeded" in capsys.readouterr().out


@pytest.mark.usefixtures("data")
def test_archives_go_to_any_fsspec_url(conn: psycopg.Connection) -> None:
    """The same run and restore against fsspec's in-memory filesystem instead of a folder."""
    url = f"memory://rpm-archive-{uuid.uuid4().hex[:8]}"
    before = conn.execute(STORED_ROWS).fetchall()
    result = run_retention(conn, options(url))
    assert result.outcome == "succeeded"
    uris = [s.archived.archive_uri for s in result.slices if s.archived]
    assert uris and all(uri.startswith("memory://") for uri in uris)
    restore_range(conn, start=OLD - timedelta(days=30), end=AS_OF, operator="dr-ops")
    assert conn.execute(STORED_ROWS).fetchall() == before


def test_rollup_tables_follow_their_own_policy(conn: psycopg.Connection, tmp_path: Path) -> None:
    """The 1-minute rollups (kept 2 years): another hypertable, time column and shape, same
    engine. Apache: rpm.rollup_1m; TSL: the continuous aggregate rpm.readings_1m, whose
    materialization hypertable holds the chunks."""
    patient = new_patient(conn)
    place_hold(conn, patient, reason="holds keep raw readings, not rollups", by="counsel")
    old = AS_OF - timedelta(days=3 * 365)
    schema, table = rollup_1m_target(conn)
    if continuous_aggregates(conn):
        # 1000 one-minute buckets of one reading each, rolled up from raw readings.
        insert_readings(
            conn, patient=patient, start=old, count=1000, step=timedelta(minutes=1), metric_ids=(1,)
        )
        materialize_rollups(conn, AS_OF)
    else:
        conn.execute(
            "INSERT INTO rpm.rollup_1m (bucket_start, last_at, reading_count, value_sum, "
            "value_min, value_max, last_value, patient_id, metric_id) "
            "SELECT %s + g * interval '1 minute', %s + g * interval '1 minute', 2, 140, 70, 70, "
            "70, %s, 1 FROM generate_series(0, 999) AS g",
            (old, old, patient),
        )
    storage = rollup_1m_storage(conn)
    stored = sql.SQL("SELECT * FROM {} ORDER BY bucket_start").format(storage)
    before = conn.execute(stored).fetchall()
    assert len(before) == 1000
    plan = build_plan(conn, as_of=AS_OF)
    rollup = [s for s in plan.slices if s.target.name == f"{schema}.{table}"]
    assert [(s.row_count, s.held_rows, s.blocked) for s in rollup] == [(1000, 0, None)]
    result = run_retention(conn, options(tmp_path))
    assert result.outcome == "succeeded"
    dropped = [s for s in result.slices if s.work.target.name == f"{schema}.{table}"]
    assert [(s.status, s.work.row_count) for s in dropped] == [("dropped", 1000)]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(storage)).fetchone() == (0,)
    restore_range(conn, start=old, end=AS_OF, operator="dr-ops", target=(schema, table))
    assert conn.execute(stored).fetchall() == before


@pytest.mark.usefixtures("data")
def test_no_drop_while_a_rechunk_is_in_progress(conn: psycopg.Connection, tmp_path: Path) -> None:
    # A re-chunk verifies source against target chunk by chunk: dropping under it would fail
    # the migration (and its rollback would resurrect nothing). Retention refuses to start.
    before = conn.execute(STORED_ROWS).fetchall()
    assert build_plan(conn, as_of=AS_OF).slices, "the data has chunks due"
    conn.execute(
        "INSERT INTO rpm.rechunk_runs (kind, table_schema, table_name, shadow_name, "
        "retired_name, source_dimensions, target_dimensions, operator) "
        "VALUES ('rechunk', 'rpm', 'readings', 'readings_new', 'readings_old', '[]', '[]', 't')"
    )
    with pytest.raises(RechunkInProgressError, match="re-chunk is in progress"):
        run_retention(conn, options(tmp_path / "archive"))
    assert conn.execute(STORED_ROWS).fetchall() == before
    (outcome,) = conn.execute(
        "SELECT outcome FROM rpm.retention_runs ORDER BY run_id DESC LIMIT 1"
    ).fetchone()  # type: ignore[misc]
    assert outcome == "failed"
