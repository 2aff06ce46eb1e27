"""Versioned, checksummed schema migrations, serialised by an advisory lock.

Migrations are ``schema/migrations/NNNN_name.up.sql`` with an optional ``NNNN_name.down.sql``.
Each runs in its own transaction together with its ledger row, so a failure leaves neither half.
A file whose first line is ``-- rpmstore:no-transaction`` runs outside a transaction (for
statements such as CREATE INDEX CONCURRENTLY); it must then hold a single statement.
An applied migration is frozen: editing it is refused, the fix is a new migration.

Functions, views, triggers and row-level security policies live instead in the idempotent layer,
``schema/idempotent/NN_name.sql`` (as timescale/pgai's ``idempotent/`` beside its frozen
``incremental/``): statements that can run again and again (CREATE OR REPLACE, DROP ... IF EXISTS
then CREATE), describing those objects as they are at the newest migration. ``up`` applies the
whole layer, in one transaction, once the database is at the newest migration and the layer is
not current: never applied, changed since (its checksum), or migrations moved since (an event in
``rpm_meta.migration_log`` after the application). Each application is a row of
``rpm_meta.layer_applications``, created by the runner beside the migration ledger.

``down`` leaves the layer's objects to the down migrations: they drop or restore what their up
migration created, so the database is back at that version's definitions, except objects only
the layer changed, which keep the newest definitions. The revert is a migration event, so the
layer is pending again and the next ``up`` at the newest migration (of whichever rpmstore
version runs it) applies that version's layer. So a new function, view, trigger or policy (or a
changed one) goes in the layer only; a migration that adds a table its layer objects need must,
in its down file, drop them first (DROP ... IF EXISTS) where they would block dropping it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Literal

import psycopg

from schema.sql import queries, schema_file

log = logging.getLogger(__name__)

# pg_advisory_lock(int4, int4) key: 'RPMS' and the migration runner's slot.
LOCK_CLASS = 0x52504D53
LOCK_OBJECT = 1
NO_TRANSACTION_MARKER = "-- rpmstore:no-transaction"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")
_LAYER_FILE_NAME = re.compile(r"^\d{2}_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """Base class: the schema was left as it was before the failing step."""


class ChecksumMismatchError(MigrationError):
    """An applied migration's file changed after it was applied."""


class MigrationLockTimeoutError(MigrationError):
    """Another runner holds the migration lock."""


class IrreversibleMigrationError(MigrationError):
    """``down`` reached a migration that has no .down.sql."""


class UnknownMigrationError(MigrationError):
    """The database has a migration this code does not know (it is older than the schema)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up_sql: str
    down_sql: str | None

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.up_sql.startswith(NO_TRANSACTION_MARKER)


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


MigrationStatus = Literal["applied", "pending", "checksum_mismatch", "unknown"]


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    status: MigrationStatus
    applied_at: datetime | None


@dataclass(frozen=True)
class LayerFile:
    name: str
    sql: str


@dataclass(frozen=True)
class Layer:
    """The idempotent layer: its files in the order they run."""

    files: tuple[LayerFile, ...]

    @property
    def checksum(self) -> str:
        """SHA-256 over every file's name and text: renaming or reordering a file changes it."""
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(file.name.encode() + b"\0" + file.sql.encode() + b"\0")
        return digest.hexdigest()


LayerStatus = Literal["applied", "pending"]


@dataclass(frozen=True)
class LayerState:
    checksum: str  # of the layer on disk
    status: LayerStatus
    applied_checksum: str | None  # of the newest application, if any
    applied_at: datetime | None


@dataclass(frozen=True)
class Upgrade:
    """What one ``up`` did: the migrations it applied, and the layer if it applied it."""

    migrations: list[Migration]
    layer: Layer | None


def discover_layer() -> Layer:
    """The idempotent layer shipped in ``schema/idempotent``, its files in name order."""
    folder = resources.files("schema") / "idempotent"
    files = sorted(
        (entry.name, entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".sql")
    )
    if strays := [name for name, _ in files if not _LAYER_FILE_NAME.match(name)]:
        raise MigrationError(f"idempotent layer files must be named NN_name.sql: {strays}")
    return Layer(tuple(LayerFile(name, sql) for name, sql in files))


def discover_migrations() -> list[Migration]:
    """Every migration shipped in ``schema/migrations``, in version order, numbered 1..n."""
    folder = resources.files("schema") / "migrations"
    ups: dict[int, tuple[str, str]] = {}
    downs: dict[int, str] = {}
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        version, name, direction = int(match[1]), match[2], match[3]
        if direction == "up":
            if version in ups:
                raise MigrationError(f"two migrations share version {version:04d}")
            ups[version] = (name, entry.read_text())
        else:
            downs[version] = entry.read_text()
    expected = list(range(1, len(ups) + 1))
    if sorted(ups) != expected:
        raise MigrationError(f"migration versions must run 1..{len(ups)}, found {sorted(ups)}")
    if orphans := sorted(set(downs) - set(ups)):
        raise MigrationError(f"down migrations without an up migration: {orphans}")
    return [
        Migration(version=v, name=ups[v][0], up_sql=ups[v][1], down_sql=downs.get(v))
        for v in expected
    ]


class Migrator:
    """Applies and reverts migrations on one autocommit connection."""

    def __init__(
        self,
        conn: psycopg.Connection,
        migrations: Sequence[Migration] | None = None,
        *,
        layer: Layer | None = None,
        lock_timeout_s: float = 30.0,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("the migrator needs an autocommit connection (it opens transactions)")
        self._conn = conn
        self._migrations = list(migrations) if migrations is not None else discover_migrations()
        self._layer = layer if layer is not None else discover_layer()
        self._lock_timeout_s = lock_timeout_s
        self._q = queries("migrations")

    @property
    def migrations(self) -> Sequence[Migration]:
        return self._migrations

    @property
    def layer(self) -> Layer:
        return self._layer

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the migration advisory lock, waiting up to the lock timeout for it."""
        key = {"lock_class": LOCK_CLASS, "lock_object": LOCK_OBJECT}
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            row = self._conn.execute(self._q["try_lock"], key).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() >= deadline:
                raise MigrationLockTimeoutError(
                    f"another migration runner holds the migration lock (waited "
                    f"{self._lock_timeout_s:g} s); let it finish, or find it in pg_locks "
                    f"(locktype 'advisory', classid {LOCK_CLASS}, objid {LOCK_OBJECT})"
                )
            time.sleep(0.2)
        try:
            yield
        finally:
            self._conn.execute(self._q["unlock"], key)

    def _ensure_ledger(self) -> None:
        with self._conn.transaction():
            self._conn.execute(schema_file("ledger.sql"))

    def _applied(self) -> dict[int, AppliedMigration]:
        exists = self._conn.execute(self._q["ledger_exists"]).fetchone()
        if exists is None or not exists[0]:
            return {}
        rows = self._conn.execute(self._q["applied"]).fetchall()
        return {row[0]: AppliedMigration(*row) for row in rows}

    def status(self) -> list[MigrationState]:
        applied = self._applied()
        states = []
        for migration in self._migrations:
            record = applied.get(migration.version)
            if record is None:
                status: MigrationStatus = "pending"
            elif record.checksum != migration.checksum:
                status = "checksum_mismatch"
            else:
                status = "applied"
            states.append(
                MigrationState(
                    migration.version,
                    migration.name,
                    status,
                    record.applied_at if record else None,
                )
            )
        known = {m.version for m in self._migrations}
        for version, record in sorted(applied.items()):
            if version not in known:
                states.append(MigrationState(version, record.name, "unknown", record.applied_at))
        return states

    def layer_status(self) -> LayerState:
        """Whether the idempotent layer on disk is the one applied at the newest migration."""
        record = self._last_layer_application()
        current = (
            record is not None
            and self._at_head(self._applied())
            and self._layer_is_current(record[0], record[1])
        )
        return LayerState(
            checksum=self._layer.checksum,
            status="applied" if current else "pending",
            applied_checksum=record[0] if record else None,
            applied_at=record[2] if record else None,
        )

    def _at_head(self, applied: dict[int, AppliedMigration]) -> bool:
        return set(applied) == {m.version for m in self._migrations}

    def _last_layer_application(self) -> tuple[str, int, datetime] | None:
        exists = self._conn.execute(self._q["layer_ledger_exists"]).fetchone()
        if exists is None or not exists[0]:
            return None
        row = self._conn.execute(self._q["last_layer_application"]).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def _layer_is_current(self, checksum: str, migration_event: int) -> bool:
        if checksum != self._layer.checksum:
            return False
        newest = self._conn.execute(self._q["last_migration_event"]).fetchone()
        return newest is not None and newest[0] == migration_event

    def _verify(self, applied: dict[int, AppliedMigration]) -> None:
        by_version = {m.version: m for m in self._migrations}
        for version, record in sorted(applied.items()):
            migration = by_version.get(version)
            if migration is None:
                raise UnknownMigrationError(
                    f"the database has migration {version:04d}_{record.name}, which this version "
                    f"of rpmstore does not ship: upgrade rpmstore before migrating"
                )
            if record.checksum != migration.checksum:
                raise ChecksumMismatchError(
                    f"migration {migration.label} was edited after it was applied "
                    f"(checksum {record.checksum[:12]} in the database, "
                    f"{migration.checksum[:12]} on disk); applied migrations are frozen: "
                    f"restore the file and put the change in a new migration"
                )

    def up(self, target: int | None = None) -> list[Migration]:
        """Apply pending migrations up to ``target`` (default: all); return those applied.

        At the newest migration, the idempotent layer is applied too when it is not current.
        """
        return self.upgrade(target).migrations

    def upgrade(self, target: int | None = None) -> Upgrade:
        """``up``, saying also whether it applied the idempotent layer."""
        with self.locked():
            self._ensure_ledger()
            applied = self._applied()
            self._verify(applied)
            done = []
            for migration in self._migrations:
                if migration.version in applied:
                    continue
                if target is not None and migration.version > target:
                    break
                self._run(migration, "up")
                done.append(migration)
            layer = None
            if self._at_head(self._applied()):
                record = self._last_layer_application()
                if record is None or not self._layer_is_current(record[0], record[1]):
                    self._apply_layer()
                    layer = self._layer
            return Upgrade(done, layer)

    def _apply_layer(self) -> None:
        started = time.monotonic()
        try:
            with self._conn.transaction():
                for file in self._layer.files:
                    try:
                        self._conn.execute(file.sql)
                    except psycopg.Error as exc:
                        raise MigrationError(
                            f"idempotent layer file {file.name} failed: {exc}"
                        ) from exc
                _record_layer(
                    self._conn,
                    self._layer,
                    max((m.version for m in self._migrations), default=0),
                    round((time.monotonic() - started) * 1000),
                )
        except psycopg.Error as exc:
            raise MigrationError(f"applying the idempotent layer failed: {exc}") from exc
        log.info(
            "idempotent layer applied %s",
            self._layer.checksum[:12],
            extra={"checksum": self._layer.checksum, "files": len(self._layer.files)},
        )

    def down(self, steps: int) -> list[Migration]:
        """Revert the ``steps`` most recent migrations, newest first; return those reverted."""
        if steps < 1:
            raise ValueError("down needs a positive number of steps")
        with self.locked():
            applied = self._applied()
            self._verify(applied)
            by_version = {m.version: m for m in self._migrations}
            to_revert = [by_version[v] for v in sorted(applied, reverse=True)[:steps]]
            if missing := [m.label for m in to_revert if m.down_sql is None]:
                raise IrreversibleMigrationError(f"no down migration for {', '.join(missing)}")
            for migration in to_revert:
                self._run(migration, "down")
            return to_revert

    def _run(self, migration: Migration, direction: Literal["up", "down"]) -> None:
        script = migration.up_sql if direction == "up" else migration.down_sql
        assert script is not None
        started = time.monotonic()
        ledger_query = self._q["record_applied" if direction == "up" else "record_reverted"]
        params = {
            "version": migration.version,
            "name": migration.name,
            "checksum": migration.checksum,
            "direction": direction,
        }
        try:
            if migration.transactional:
                with self._conn.transaction():
                    self._conn.execute(script)
                    self._record(ledger_query, params, started)
            else:
                self._conn.execute(script)
                with self._conn.transaction():
                    self._record(ledger_query, params, started)
        except psycopg.Error as exc:
            raise MigrationError(
                f"migration {migration.label} ({direction}) failed: {exc}"
            ) from exc
        log.info(
            "migration %s %s",
            "applied" if direction == "up" else "reverted",
            migration.label,
            extra={"version": migration.version, "ms": params["execution_ms"]},
        )

    def _record(self, ledger_query: str, params: dict[str, object], started: float) -> None:
        params["execution_ms"] = round((time.monotonic() - started) * 1000)
        self._conn.execute(ledger_query, params)
        self._conn.execute(self._q["log_event"], params)


def _record_layer(
    conn: psycopg.Connection, layer: Layer, migration_version: int, execution_ms: int
) -> None:
    conn.execute(
        queries("migrations")["record_layer_application"],
        {
            "checksum": layer.checksum,
            "files": [file.name for file in layer.files],
            "migration_version": migration_version,
            "execution_ms": execution_ms,
        },
    )


def apply_canonical_schema(
    conn: psycopg.Connection, migrations: Sequence[Migration], layer: Layer | None = None
) -> None:
    """Build an empty database from ``schema/schema.sql`` and the idempotent layer, and mark
    every migration applied.

    Used to prove that the canonical schema file and the migrations describe the same database.
    """
    q = queries("migrations")
    with conn.transaction():
        conn.execute(schema_file("ledger.sql"))
        conn.execute(schema_file("schema.sql"))
        for migration in migrations:
            params = {
                "version": migration.version,
                "name": migration.name,
                "checksum": migration.checksum,
                "direction": "canonical",
                "execution_ms": 0,
            }
            conn.execute(q["record_applied"], params)
            conn.execute(q["log_event"], params)
        layer = layer if layer is not None else discover_layer()
        for file in layer.files:
            conn.execute(file.sql)
        _record_layer(conn, layer, max((m.version for m in migrations), default=0), 0)
