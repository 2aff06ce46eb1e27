"""The migration runner against a real TimescaleDB: equality, round trip, checksums, the lock."""

from __future__ import annotations

import dataclasses
import re
import threading

import psycopg
import pytest

from schema.introspect import describe
from schema.migrate import (
    ChecksumMismatchError,
    IrreversibleMigrationError,
    Migration,
    MigrationError,
    MigrationLockTimeoutError,
    Migrator,
    UnknownMigrationError,
    apply_canonical_schema,
    discover_migrations,
)
from schema.sql import queries
from tests.conftest import DatabaseFactory


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def _ledger_versions(conn: psycopg.Connection) -> list[int]:
    return [row[0] for row in conn.execute(queries("migrations")["applied"]).fetchall()]


def _extra_migration(version: int, up_sql: str, down_sql: str | None = None) -> Migration:
    return Migration(version=version, name=f"test_{version}", up_sql=up_sql, down_sql=down_sql)


def test_migrations_build_the_canonical_schema(
    database_factory: DatabaseFactory, empty_template: str
) -> None:
    """Applying every migration in order gives exactly the database schema.sql describes."""
    from_migrations = database_factory.clone(empty_template)
    from_canonical = database_factory.clone(empty_template)
    with _connect(from_migrations) as conn:
        Migrator(conn).up()
        migrated = describe(conn)
    with _connect(from_canonical) as conn:
        apply_canonical_schema(conn, discover_migrations())
        canonical = describe(conn)
    assert migrated["relations"], "the comparison must see the rpm tables"
    for aspect in migrated:
        assert migrated[aspect] == canonical[aspect], f"{aspect} differs"
    assert set(migrated) == set(canonical)


# TSL edition: a continuous aggregate's invalidation trigger on its source hypertable passes
# that hypertable's internal id ('1', then '5' after down and up again: ids are never reused).
# The trigger, its table, timing and function must still match; only the id is masked, like the
# materialization ids in the views (schema/queries/introspect.sql).
_CAGG_TRIGGER_ID = re.compile(r"(continuous_agg_invalidation_trigger\(')[0-9]+('\))")


def _without_renumbered_ids(
    description: dict[str, list[tuple[str, ...]]],
) -> dict[str, list[tuple[str, ...]]]:
    """The description with the ids TimescaleDB assigns anew on every build masked."""
    triggers = [
        (*row[:-1], _CAGG_TRIGGER_ID.sub(r"\1N\2", row[-1])) for row in description["triggers"]
    ]
    return {**description, "triggers": triggers}


def test_up_down_up_round_trip(empty_db_url: str) -> None:
    """Reverting every migration and applying them again restores the identical schema."""
    with _connect(empty_db_url) as conn:
        migrator = Migrator(conn)
        applied = migrator.up()
        first = describe(conn)
        reverted = migrator.down(len(applied))
        assert [m.version for m in reverted] == sorted((m.version for m in applied), reverse=True)
        after_down = describe(conn)
        assert not [r for r in after_down["relations"] if r[0] == "rpm"]
        migrator.up()
        assert _without_renumbered_ids(describe(conn)) == _without_renumbered_ids(first)
        directions = conn.execute(
            "SELECT direction FROM rpm_meta.migration_log ORDER BY event_id"
        ).fetchall()
    count = len(applied)
    assert [d[0] for d in directions] == ["up"] * count + ["down"] * count + ["up"] * count


def test_up_is_idempotent_and_status_reports_applied(db_url: str) -> None:
    with _connect(db_url) as conn:
        migrator = Migrator(conn)
        assert migrator.up() == []
        states = migrator.status()
    assert {s.status for s in states} == {"applied"}
    assert [s.version for s in states] == [m.version for m in discover_migrations()]


def test_edited_applied_migration_is_refused(db_url: str) -> None:
    """Changing an applied migration's file makes up and down refuse, naming the migration."""
    shipped = discover_migrations()
    edited = [
        dataclasses.replace(shipped[0], up_sql=shipped[0].up_sql + "\n-- an innocent edit\n"),
        *shipped[1:],
    ]
    with _connect(db_url) as conn:
        migrator = Migrator(conn, edited)
        with pytest.raises(ChecksumMismatchError, match=shipped[0].label):
            migrator.up()
        with pytest.raises(ChecksumMismatchError):
            migrator.down(1)
        assert migrator.status()[0].status == "checksum_mismatch"
        assert _ledger_versions(conn) == [m.version for m in shipped]


def test_migration_unknown_to_this_code_is_refused(db_url: str) -> None:
    """A database migrated by newer code is not touched by older code."""
    shipped = discover_migrations()
    newer = [*shipped, _extra_migration(len(shipped) + 1, "CREATE TABLE rpm.newer (id int)")]
    with _connect(db_url) as conn:
        Migrator(conn, newer).up()
        with pytest.raises(UnknownMigrationError, match="upgrade rpmstore"):
            Migrator(conn, shipped).up()
        assert Migrator(conn, shipped).status()[-1].status == "unknown"


def test_failed_migration_leaves_no_trace(db_url: str) -> None:
    """A migration that fails half-way rolls back entirely, ledger row included."""
    shipped = discover_migrations()
    broken = _extra_migration(
        len(shipped) + 1,
        "CREATE TABLE rpm.half_done (id int);\nSELECT * FROM rpm.table_that_does_not_exist;",
    )
    with _connect(db_url) as conn:
        with pytest.raises(MigrationError, match=broken.label):
            Migrator(conn, [*shipped, broken]).up()
        assert conn.execute("SELECT to_regclass('rpm.half_done')").fetchone() == (None,)
        assert _ledger_versions(conn) == [m.version for m in shipped]


def test_no_transaction_migration_runs_outside_a_transaction(db_url: str) -> None:
    shipped = discover_migrations()
    concurrent_index = _extra_migration(
        len(shipped) + 1,
        "-- rpmstore:no-transaction\n"
        "CREATE INDEX CONCURRENTLY quarantine_by_device ON rpm.ingest_quarantine (claimed_device)",
        "DROP INDEX CONCURRENTLY rpm.quarantine_by_device",
    )
    assert not concurrent_index.transactional
    with _connect(db_url) as conn:
        Migrator(conn, [*shipped, concurrent_index]).up()
        assert conn.execute("SELECT to_regclass('rpm.quarantine_by_device')").fetchone() != (None,)
        Migrator(conn, [*shipped, concurrent_index]).down(1)
        assert conn.execute("SELECT to_regclass('rpm.quarantine_by_device')").fetchone() == (None,)


def test_down_without_down_file_is_refused(db_url: str) -> None:
    shipped = discover_migrations()
    one_way = _extra_migration(len(shipped) + 1, "CREATE TABLE rpm.one_way (id int)")
    with _connect(db_url) as conn:
        migrator = Migrator(conn, [*shipped, one_way])
        migrator.up()
        with pytest.raises(IrreversibleMigrationError, match=one_way.label):
            migrator.down(1)
        assert conn.execute("SELECT to_regclass('rpm.one_way')").fetchone() != (None,)


def test_lock_held_by_another_runner_times_out(empty_db_url: str) -> None:
    """While another session holds the migration lock, a runner gives up and changes nothing."""
    q = queries("migrations")
    key = {"lock_class": 0x52504D53, "lock_object": 1}
    with _connect(empty_db_url) as holder, _connect(empty_db_url) as conn:
        assert holder.execute(q["try_lock"], key).fetchone() == (True,)
        with pytest.raises(MigrationLockTimeoutError, match="another migration runner"):
            Migrator(conn, lock_timeout_s=0.5).up()
        assert conn.execute("SELECT to_regnamespace('rpm')").fetchone() == (None,)
        holder.execute(q["unlock"], key)
        assert Migrator(conn, lock_timeout_s=0.5).up()


def test_concurrent_runners_apply_each_migration_once(empty_db_url: str) -> None:
    """Two runners started together: one applies, the other waits and finds nothing to do."""
    results: list[list[Migration]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            with _connect(empty_db_url) as conn:
                migrator = Migrator(conn, lock_timeout_s=60)
                start.wait()
                results.append(migrator.up())
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    shipped = [m.version for m in discover_migrations()]
    assert sorted(len(r) for r in results) == [0, len(shipped)]
    with _connect(empty_db_url) as conn:
        assert _ledger_versions(conn) == shipped
        ups = conn.execute(
            "SELECT count(*) FROM rpm_meta.migration_log WHERE direction = 'up'"
        ).fetchone()
    assert ups == (len(shipped),)
