"""The idempotent layer (schema/idempotent) against a real TimescaleDB: when it is re-applied."""

from __future__ import annotations

import threading

import psycopg
import pytest

from schema.migrate import (
    Layer,
    LayerFile,
    Migration,
    MigrationError,
    Migrator,
    Upgrade,
    apply_canonical_schema,
    discover_layer,
    discover_migrations,
)
from tests.conftest import DatabaseFactory

PROBE = LayerFile(
    "70_probe.sql",
    "CREATE OR REPLACE FUNCTION rpm.layer_probe() RETURNS integer\n"
    "    LANGUAGE sql IMMUTABLE AS $$ SELECT 1 $$;\n",
)


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def _with(*extra: LayerFile) -> Layer:
    return Layer((*discover_layer().files, *extra))


def _applications(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT checksum FROM rpm_meta.layer_applications ORDER BY application_id"
    ).fetchall()
    return [row[0] for row in rows]


def _exists(conn: psycopg.Connection, regproc: str) -> bool:
    row = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (regproc,)).fetchone()
    return row is not None and bool(row[0])


def test_layer_is_applied_when_changed_and_not_when_unchanged(db_url: str) -> None:
    with _connect(db_url) as conn:
        shipped = discover_layer()
        assert _applications(conn) == [shipped.checksum]  # by the migrated template's `up`
        assert Migrator(conn).upgrade() == Upgrade([], None)
        assert Migrator(conn).layer_status().status == "applied"

        changed = _with(PROBE)
        migrator = Migrator(conn, layer=changed)
        assert migrator.layer_status().status == "pending"
        assert migrator.upgrade() == Upgrade([], changed)
        assert _exists(conn, "rpm.layer_probe()")
        assert migrator.layer_status().status == "applied"
        assert migrator.upgrade() == Upgrade([], None)

        # Back to the shipped layer: a different checksum again, so it runs (and leaves the
        # probe: removing an object takes an explicit DROP ... IF EXISTS in the layer).
        assert Migrator(conn).upgrade().layer == shipped
        assert _applications(conn) == [shipped.checksum, changed.checksum, shipped.checksum]


def test_layer_is_applied_again_after_migrations_move(db_url: str) -> None:
    """A migration that drops a layer object (here: a trigger) gets it back from the layer."""
    shipped = discover_migrations()
    drops_trigger = Migration(
        len(shipped) + 1,
        "test_drops_trigger",
        "DROP TRIGGER devices_touch ON rpm.devices",
        "SELECT 1",
    )
    trigger = "SELECT count(*) FROM pg_trigger WHERE tgname = 'devices_touch'"
    with _connect(db_url) as conn:
        migrator = Migrator(conn, [*shipped, drops_trigger])
        upgrade = migrator.upgrade()
        assert upgrade.migrations == [drops_trigger]
        assert upgrade.layer is not None, "a migration moved: the layer runs although unchanged"
        assert conn.execute(trigger).fetchone() == (1,)

        # Down and up again to the same version: still moved, so applied again.
        migrator.down(1)
        assert migrator.layer_status().status == "pending"
        assert migrator.upgrade().layer is not None
        assert migrator.upgrade() == Upgrade([], None)
        assert len(_applications(conn)) == 3


def test_layer_waits_for_the_newest_migration(empty_db_url: str) -> None:
    """Below the newest migration the layer (which describes the newest schema) does not run."""
    with _connect(empty_db_url) as conn:
        migrator = Migrator(conn)
        upgrade = migrator.upgrade(target=3)
        assert [m.version for m in upgrade.migrations] == [1, 2, 3]
        assert upgrade.layer is None
        assert _applications(conn) == []
        assert migrator.layer_status().status == "pending"
        assert not _exists(conn, "rpm.can_see_patient(uuid)")
        assert migrator.upgrade().layer is not None
        assert migrator.layer_status().status == "applied"


def test_down_leaves_the_layer_pending_and_up_restores_it(db_url: str) -> None:
    """Reverting 0013 (and the migrations after it) brings back 0006's scoping functions; `up`
    brings back the layer's."""
    definition = (
        "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.proname = 'can_see_patient'"
    )
    with _connect(db_url) as conn:
        migrator = Migrator(conn)
        assert conn.execute(definition).fetchone() == ("plpgsql",)
        migrator.down(3)
        assert conn.execute(definition).fetchone() == ("sql",)
        assert migrator.layer_status().status == "pending"
        upgrade = migrator.upgrade()
        assert [m.version for m in upgrade.migrations] == [13, 14, 15]
        assert upgrade.layer is not None
        assert conn.execute(definition).fetchone() == ("plpgsql",)


def test_failed_layer_leaves_no_trace(db_url: str) -> None:
    """The layer is one transaction: a failing file undoes the files before it and records none."""
    broken = _with(PROBE, LayerFile("80_broken.sql", "SELECT * FROM rpm.no_such_table"))
    with _connect(db_url) as conn:
        before = _applications(conn)
        with pytest.raises(MigrationError, match=r"80_broken\.sql"):
            Migrator(conn, layer=broken).upgrade()
        assert not _exists(conn, "rpm.layer_probe()")
        assert _applications(conn) == before
        assert Migrator(conn, layer=broken).layer_status().status == "pending"


def test_canonical_build_records_the_layer(
    database_factory: DatabaseFactory, empty_template: str
) -> None:
    """A database built from schema.sql and the layer is as current as a migrated one."""
    with _connect(database_factory.clone(empty_template)) as conn:
        apply_canonical_schema(conn, discover_migrations())
        assert Migrator(conn).layer_status().status == "applied"
        assert Migrator(conn).upgrade() == Upgrade([], None)


def test_concurrent_runners_apply_a_changed_layer_once(db_url: str) -> None:
    """Runners started together with a changed layer: one applies it, the others find it done."""
    changed = _with(PROBE)
    runners = 3
    results: list[Upgrade] = []
    errors: list[BaseException] = []
    start = threading.Barrier(runners)

    def run() -> None:
        try:
            with _connect(db_url) as conn:
                migrator = Migrator(conn, layer=changed, lock_timeout_s=60)
                start.wait()
                results.append(migrator.upgrade())
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.layer is not None for r in results) == [False] * (runners - 1) + [True]
    with _connect(db_url) as conn:
        assert _applications(conn).count(changed.checksum) == 1
