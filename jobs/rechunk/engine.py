"""Rewrite a hypertable into a new one with other dimensions, without losing a row.

One run, every step resumable from the ledger (``rpm.rechunk_*``):

1. *prepare* (one short transaction): a run row; the new table built as a faithful copy from
   the catalogues under a temporary name; on the live table an AFTER INSERT trigger that
   writes every new row into the new table in the same transaction (the dual write: statement
   level with a transition table, so one INSERT ... SELECT per ingest statement; it fires for
   COPY and for INSERT ... ON CONFLICT alike, only for rows really stored), and guards refusing
   UPDATE/DELETE/TRUNCATE; the list of source chunks. Rows committed before this point are
   copied; rows after it are dual-written.
2. *copy*: per source chunk, ranges of heap blocks (TID range scans) inserted with
   ``ON CONFLICT DO NOTHING`` (a dual-written row is simply skipped), each batch committed
   with its ledger row, so a killed run resumes at the next block.
3. *verify*: per source chunk, in one snapshot, the rows it holds and the rows the new table
   holds under the chunk's own dimension constraints: count and an order-independent checksum
   over every column; the new table's chunks and their share are the lineage.
4. *reconcile*: rows per UTC day in both tables, one statement (one snapshot), stored.
5. *cutover* (one transaction, short lock_timeout, retried): the triggers moved, indexes,
   constraints and tables renamed, row-level security and user triggers switched on, and the
   dual write reversed (new -> old) so that ``rollback`` stays lossless until ``finalize``
   drops the old table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from jobs.rechunk import ddl
from jobs.rechunk.catalog import (
    Dimension,
    TableDefinition,
    check_partitioning,
    dependent_views,
    q,
    read_definition,
    refuse_dependents,
)
from jobs.rechunk.copy import Copier
from jobs.rechunk.errors import RechunkRefusedError, VerificationError
from jobs.rechunk.ledger import Ledger
from jobs.rechunk.locking import Locks
from jobs.rechunk.mirror import drop_mirror_function, drop_triggers, install_guard, install_mirror
from jobs.rechunk.model import (
    DayCount,
    Kind,
    Options,
    Run,
    RunReport,
    identifier,
    operator_name,
)
from jobs.rechunk.verify import VERIFY_PASSES, Verifier

log = logging.getLogger(__name__)


class Rechunker:
    """Runs, resumes, cuts over, rolls back and finalizes migrations of one database."""

    def __init__(
        self, conn: psycopg.Connection, *, options: Options | None = None, operator: str = ""
    ) -> None:
        if not conn.autocommit:
            raise ValueError("the re-chunk needs an autocommit connection (it commits per batch)")
        self._conn = conn
        self._options = options or Options()
        self._locks = Locks(conn, self._options)
        self._ledger = Ledger(conn, operator or operator_name())
        # One copier for the connection's life: the pause hook counts batches per process.
        self._copier = Copier(conn, self._options, self._ledger)
        self._verifier = Verifier(conn, self._ledger)
        conn.execute(q("session"), {})

    # -- public commands ---------------------------------------------------------------------

    def rechunk(self, schema: str, name: str, *, chunk_interval: str) -> RunReport:
        """Rewrite ``schema.name`` with a new time-chunk interval (resuming a run in progress)."""
        try:
            row = self._conn.execute(
                q("normalize_interval"), {"interval": chunk_interval}
            ).fetchone()
        except psycopg.errors.DataError as exc:
            raise RechunkRefusedError(f"--chunk-interval {chunk_interval!r}: {exc}") from None
        assert row is not None
        if row[0] is None or not str(row[0]) or str(row[0]).startswith("-"):
            raise RechunkRefusedError(f"--chunk-interval {chunk_interval!r} must be positive")
        interval = str(row[0])

        def target(table: TableDefinition) -> tuple[Dimension, ...]:
            time_dimension = table.time_dimension
            return (
                Dimension(time_dimension.column, "time", interval, None),
                *table.dimensions[1:],
            )

        return self._run(schema, name, "rechunk", target)

    def repartition(
        self, schema: str, name: str, *, partitions: int, column: str | None = None
    ) -> RunReport:
        """Add or change the hash (space) dimension of ``schema.name``."""
        if partitions < 1:
            raise RechunkRefusedError("--partitions must be at least 1")

        def target(table: TableDefinition) -> tuple[Dimension, ...]:
            chosen = column or _default_hash_column(table)
            time_dimension = table.time_dimension
            if partitions == 1:
                return (time_dimension,)  # one partition = no space dimension
            return (time_dimension, Dimension(chosen, "hash", None, partitions))

        return self._run(schema, name, "repartition", target)

    def rollback(self, schema: str, name: str) -> str:
        """Give the old table back (before cutover: abandon the run; after: swap back)."""
        with self._locks.table_lock(schema, name):
            run = self._ledger.active_run(schema, name)
            if run is None:
                raise RechunkRefusedError(f"no re-chunk of {schema}.{name} to roll back")
            if run.state == "copying":
                self._locks.with_retries(lambda: self._abandon(schema, name, run))
            else:
                self._locks.with_retries(lambda: self._swap_back(schema, name, run))
            log.info("rolled back", extra={"run_id": run.run_id, "table": f"{schema}.{name}"})
            return f"run {run.run_id}: {schema}.{name} is the old table again"

    def finalize(self, schema: str, name: str) -> str:
        """Drop the old table after a cutover (the end of rollback's window)."""
        with self._locks.table_lock(schema, name):
            run = self._ledger.active_run(schema, name)
            if run is None or run.state != "cut_over":
                raise RechunkRefusedError(
                    f"no cut-over re-chunk of {schema}.{name} to finalize"
                    + (f" (run {run.run_id} is still copying)" if run else "")
                )
            self._locks.with_retries(lambda: self._drop_retired(schema, name, run))
            log.info("finalized", extra={"run_id": run.run_id, "table": f"{schema}.{name}"})
            return f"run {run.run_id}: old table {schema}.{run.names.retired(name)} dropped"

    def runs(self) -> list[tuple[Any, ...]]:
        return self._ledger.runs()

    def reconciliation(self, run_id: int) -> list[DayCount]:
        return self._ledger.reconciliation(run_id)

    # -- the run -----------------------------------------------------------------------------

    def _run(
        self,
        schema: str,
        name: str,
        kind: Kind,
        target_of: Callable[[TableDefinition], tuple[Dimension, ...]],
    ) -> RunReport:
        with self._locks.table_lock(schema, name):
            started = time.monotonic()
            run = self._ledger.active_run(schema, name)
            with self._conn.transaction():
                table = read_definition(self._conn, schema, name)
            target = target_of(table)
            if run is None:
                self._check(table, target)
                run = self._locks.with_retries(lambda: self._prepare(table, kind, target))
            elif run.state == "cut_over":
                raise RechunkRefusedError(
                    f"run {run.run_id} already cut {schema}.{name} over: "
                    f"'rechunk finalize' drops the old table, 'rechunk rollback' restores it"
                )
            elif run.kind != kind or run.target != target:
                raise RechunkRefusedError(
                    f"run {run.run_id} is migrating {schema}.{name} to "
                    f"{', '.join(d.describe() for d in run.target)}; finish it, or "
                    f"'rechunk rollback' it first"
                )
            else:
                log.info("resuming", extra={"run_id": run.run_id, "table": table.qualified})
            report = RunReport(run.run_id, table.qualified, kind, target)
            report.seconds["prepare"] = time.monotonic() - started

            phase = time.monotonic()
            for _ in range(VERIFY_PASSES):
                self._copier.copy(table, run, report)
                report.seconds["copy"] = report.seconds.get("copy", 0) + time.monotonic() - phase
                phase = time.monotonic()
                if self._verifier.verify(table, run, report):
                    break
                report.seconds["verify"] = (
                    report.seconds.get("verify", 0) + time.monotonic() - phase
                )
                phase = time.monotonic()
            else:
                self._verifier.raise_mismatch(run)
            report.seconds["verify"] = report.seconds.get("verify", 0) + time.monotonic() - phase

            phase = time.monotonic()
            report.reconciliation = self._verifier.reconcile(table, run)
            report.seconds["reconcile"] = time.monotonic() - phase
            differing = [d for d in report.reconciliation if d.difference]
            if differing:
                raise VerificationError(
                    f"run {run.run_id}: rows per day differ between the old and the new table on "
                    f"{len(differing)} days (first: {differing[0].day}, old "
                    f"{differing[0].old_rows}, new {differing[0].new_rows}); no cutover"
                )
            if self._options.cutover:
                phase = time.monotonic()
                self._locks.with_retries(lambda: self._cutover(schema, name, run))
                report.seconds["cutover"] = time.monotonic() - phase
                report.state = "cut_over"
            report.seconds["total"] = time.monotonic() - started
            return report

    def _check(self, table: TableDefinition, target: Sequence[Dimension]) -> None:
        if table.compressed:
            raise RechunkRefusedError(
                f"{table.qualified} has compression enabled: decompress and disable it first"
            )
        if tuple(target) == table.dimensions:
            raise RechunkRefusedError(
                f"{table.qualified} already has "
                f"{', '.join(d.describe() for d in table.dimensions)}: nothing to do"
            )
        refuse_dependents(self._conn, table)
        check_partitioning(table, target)

    def _prepare(self, table: TableDefinition, kind: Kind, target: Sequence[Dimension]) -> Run:
        conn = self._conn
        with conn.transaction():
            self._locks.lock_timeout()
            run = self._ledger.open_run(table, kind, target)
            names = run.names
            shadow_name = names.shadow(table.name)
            source = identifier(table.schema, table.name)
            shadow = identifier(table.schema, shadow_name)
            for statement in ddl.create_table(table, shadow):
                conn.execute(statement)
            shadow_text = self._qualified(table.schema, shadow_name)
            first, *others = target
            conn.execute(
                q("create_hypertable"),
                {"table": shadow_text, "column": first.column, "interval": first.interval},
            )
            for dimension in others:
                conn.execute(
                    q("add_hash_dimension"),
                    {
                        "table": shadow_text,
                        "column": dimension.column,
                        "partitions": dimension.partitions,
                    },
                )
            source_text = self._qualified(table.schema, table.name)
            for statement in ddl.create_indexes(table, source_text, shadow, names):
                conn.execute(statement)
            for statement in ddl.access(table, shadow, self._current_user()):
                conn.execute(statement)
            # Last: these take the live table's lock (and each chunk's) until COMMIT.
            install_mirror(
                conn,
                table,
                on=source,
                into=shadow,
                function_name=names.to_new_function,
                names=names,
            )
            install_guard(
                conn,
                on=source,
                names=names,
                message=f"{table.qualified} is being migrated (run {run.run_id})",
            )
            self._ledger.add_chunks(table, run)
        log.info(
            "prepared",
            extra={
                "run_id": run.run_id,
                "table": table.qualified,
                "shadow": shadow_name,
                "target": [d.describe() for d in target],
            },
        )
        return run

    # -- swaps -------------------------------------------------------------------------------

    def _rename_indexes(
        self, table: TableDefinition, on: sql.Identifier, rename: Callable[[str], str], back: bool
    ) -> None:
        """Rename the indexes (and index-backed constraints) of ``on``: name -> rename(name),
        or rename(name) -> name when ``back``."""
        for constraint in table.constraints:
            if constraint.index_backed:
                old, new = constraint.name, rename(constraint.name)
                if back:
                    old, new = new, old
                self._conn.execute(
                    sql.SQL(q("rename_constraint")).format(
                        table=on, old_name=sql.Identifier(old), new_name=sql.Identifier(new)
                    )
                )
        for index in table.indexes:
            if index.constraint_backed:
                continue
            old, new = index.name, rename(index.name)
            if back:
                old, new = new, old
            self._conn.execute(
                sql.SQL(q("rename_index")).format(
                    index=identifier(table.schema, old), new_name=sql.Identifier(new)
                )
            )

    def _rename_table(self, schema: str, old: str, new: str) -> None:
        self._conn.execute(
            sql.SQL(q("rename_table")).format(
                table=identifier(schema, old), new_name=sql.Identifier(new)
            )
        )

    def _cutover(self, schema: str, name: str, run: Run) -> None:
        conn = self._conn
        names = run.names
        live = identifier(schema, name)
        shadow_name, retired_name = names.shadow(name), names.retired(name)
        with conn.transaction():
            self._locks.lock(live, identifier(schema, shadow_name))
            # Read again under the lock: what the new table must look like when it goes live.
            table = read_definition(conn, schema, name)
            refuse_dependents(conn, table)
            views = dependent_views(conn, table)
            drop_triggers(self._conn, on=live, names=names)
            drop_mirror_function(conn, schema, names.to_new_function)
            self._rename_indexes(table, live, names.retired, back=False)
            self._rename_table(schema, name, retired_name)
            self._rename_indexes(table, identifier(schema, shadow_name), names.shadow, back=True)
            self._rename_table(schema, shadow_name, name)
            for statement in ddl.own_sequences(table, live):
                conn.execute(statement)
            for statement in ddl.at_cutover(table, live, security=True):
                conn.execute(statement)
            for statement in ddl.replace_views(views):
                conn.execute(statement)
            retired = identifier(schema, retired_name)
            for statement in ddl.drop_user_triggers(table, retired):
                conn.execute(statement)
            install_mirror(
                conn, table, on=live, into=retired, function_name=names.to_old_function, names=names
            )
            install_guard(
                conn,
                on=live,
                names=names,
                message=f"{table.qualified} was migrated by run {run.run_id} and the old table "
                f"is kept for rollback",
            )
            self._ledger.set_state(run, "cut_over")
        log.info("cut over", extra={"run_id": run.run_id, "table": f"{schema}.{name}"})

    def _abandon(self, schema: str, name: str, run: Run) -> None:
        names = run.names
        with self._conn.transaction():
            live = identifier(schema, name)
            shadow = identifier(schema, names.shadow(name))
            self._locks.lock(live, shadow)
            drop_triggers(self._conn, on=live, names=names)
            drop_mirror_function(self._conn, schema, names.to_new_function, if_exists=True)
            self._conn.execute(sql.SQL(q("drop_table")).format(table=shadow))
            self._ledger.set_state(run, "rolled_back")

    def _swap_back(self, schema: str, name: str, run: Run) -> None:
        conn = self._conn
        names = run.names
        live = identifier(schema, name)
        retired_name, shadow_name = names.retired(name), names.shadow(name)
        with conn.transaction():
            self._locks.lock(live, identifier(schema, retired_name))
            table = read_definition(conn, schema, name)
            refuse_dependents(conn, table)
            views = dependent_views(conn, table)
            drop_triggers(self._conn, on=live, names=names)
            drop_mirror_function(conn, schema, names.to_old_function)
            self._rename_indexes(table, live, names.shadow, back=False)
            self._rename_table(schema, name, shadow_name)
            retired = identifier(schema, retired_name)
            self._rename_indexes(table, retired, names.retired, back=True)
            self._rename_table(schema, retired_name, name)
            for statement in ddl.own_sequences(table, live):
                conn.execute(statement)
            for statement in ddl.at_cutover(table, live, security=False):
                conn.execute(statement)  # the user triggers, back on the old table
            for statement in ddl.replace_views(views):
                conn.execute(statement)
            # Every row the new table received after the cutover was mirrored into the old one.
            conn.execute(sql.SQL(q("drop_table")).format(table=identifier(schema, shadow_name)))
            self._ledger.set_state(run, "rolled_back")

    def _drop_retired(self, schema: str, name: str, run: Run) -> None:
        names = run.names
        live = identifier(schema, name)
        retired = identifier(schema, names.retired(name))
        with self._conn.transaction():
            self._locks.lock(live, retired)
            drop_triggers(self._conn, on=live, names=names)
            drop_mirror_function(self._conn, schema, names.to_old_function)
            self._conn.execute(sql.SQL(q("drop_table")).format(table=retired))
            self._ledger.set_state(run, "finalized")

    # -- helpers -----------------------------------------------------------------------------

    def _qualified(self, schema: str, name: str) -> str:
        row = self._conn.execute(q("qualified_name"), {"schema": schema, "name": name}).fetchone()
        assert row is not None
        return str(row[0])

    def _current_user(self) -> str:
        row = self._conn.execute(q("current_user"), {}).fetchone()
        assert row is not None
        return str(row[0])


def _default_hash_column(table: TableDefinition) -> str:
    """The current space column, else the first column of the natural key every unique index
    shares (for rpm.readings: device_id), so the unique key survives the repartition."""
    for dimension in table.dimensions[1:]:
        if dimension.kind == "hash":
            return dimension.column
    unique = [columns for _name, columns in table.unique_column_sets()]
    time_column = table.time_dimension.column
    if unique:
        for column in unique[0]:
            if column != time_column and all(column in other for other in unique):
                return column
    raise RechunkRefusedError(f"{table.qualified}: name the column to hash with --column")
