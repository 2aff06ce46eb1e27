"""Rewrite a hypertable into a new one with other dimensions, without losing a row.

One run, every step resumable from the ledger (``rpm.rechunk_*``, :mod:`.ledger`); this module only
orders the steps, each of which lives in its own module:

1. *prepare* (:mod:`.prepare`, :mod:`.mirror`; one short transaction): a run row; the new table
   built as a faithful copy from the catalogues under a temporary name; on the live table an AFTER
   INSERT trigger that writes every new row into the new table in the same transaction (the dual
   write: statement level with a transition table, so one INSERT ... SELECT per ingest statement; it
   fires for COPY and for INSERT ... ON CONFLICT alike, only for rows really stored), and guards
   refusing UPDATE/DELETE/TRUNCATE; the list of source chunks. Rows committed before this point are
   copied; rows after it are dual-written.
2. *copy* (:mod:`.copy`): per source chunk, ranges of heap blocks (TID range scans) inserted with
   ``ON CONFLICT DO NOTHING`` (a dual-written row is simply skipped), each batch committed with its
   ledger row, so a killed run resumes at the next block.
3. *verify* (:mod:`.verify`): per source chunk, in one snapshot, the rows it holds and the rows the
   new table holds under the chunk's own dimension constraints: count and an order-independent
   checksum over every column; the new table's chunks and their share are the lineage.
4. *reconcile* (:mod:`.verify`): rows per UTC day in both tables, one statement (one snapshot),
   stored.
5. *cutover* (:mod:`.swap`, :mod:`.locking`; one transaction, short lock_timeout, retried): the
   triggers moved, indexes, constraints and tables renamed, row-level security and user triggers
   switched on, and the dual write reversed (new -> old) so that ``rollback`` stays lossless until
   ``finalize`` drops the old table. Plain views and (full edition) the continuous aggregates
   built on the table follow the live name: the aggregates' views are replaced and their
   raw-table catalogue rows and invalidation trigger moved, while their materialized history,
   watermarks and policies stay where they are (:func:`.swap._move_aggregates` says why). A
   rollback moves them back the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from jobs.rechunk.catalog import Dimension, TableDefinition, q, read_definition
from jobs.rechunk.copy import Copier
from jobs.rechunk.errors import RechunkRefusedError, VerificationError
from jobs.rechunk.ledger import Ledger
from jobs.rechunk.locking import Locks
from jobs.rechunk.model import (
    DayCount,
    Kind,
    Options,
    Run,
    RunReport,
    operator_name,
)
from jobs.rechunk.prepare import check, prepare
from jobs.rechunk.swap import Swaps
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
        self._swaps = Swaps(conn, self._locks, self._ledger)
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
                self._swaps.abandon(schema, name, run)
            else:
                self._swaps.swap(schema, name, run, "back")
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
            self._swaps.drop_retired(schema, name, run)
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
            run = self._prepare_or_resume(run, table, kind, target)
            report = RunReport(run.run_id, table.qualified, kind, target)
            report.seconds["prepare"] = time.monotonic() - started

            self._copy_and_verify(table, run, report)

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
                self._swaps.swap(schema, name, run, "cutover")
                log.info("cut over", extra={"run_id": run.run_id, "table": f"{schema}.{name}"})
                report.seconds["cutover"] = time.monotonic() - phase
                report.state = "cut_over"
            report.seconds["total"] = time.monotonic() - started
            return report

    def _prepare_or_resume(
        self, run: Run | None, table: TableDefinition, kind: Kind, target: tuple[Dimension, ...]
    ) -> Run:
        """A new run when none is active; else the active one, if it is this same migration."""
        if run is None:
            check(self._conn, table, target)
            return prepare(
                self._conn,
                locks=self._locks,
                ledger=self._ledger,
                table=table,
                kind=kind,
                target=target,
            )
        if run.state == "cut_over":
            raise RechunkRefusedError(
                f"run {run.run_id} already cut {table.qualified} over: "
                f"'rechunk finalize' drops the old table, 'rechunk rollback' restores it"
            )
        if run.kind != kind or run.target != target:
            raise RechunkRefusedError(
                f"run {run.run_id} is migrating {table.qualified} to "
                f"{', '.join(d.describe() for d in run.target)}; finish it, or "
                f"'rechunk rollback' it first"
            )
        log.info("resuming", extra={"run_id": run.run_id, "table": table.qualified})
        return run

    def _copy_and_verify(self, table: TableDefinition, run: Run, report: RunReport) -> None:
        """Copy, then verify; chunks that differ are copied again, VERIFY_PASSES times at most."""
        phase = time.monotonic()
        for _ in range(VERIFY_PASSES):
            self._copier.copy(table, run, report)
            phase = _spent(report, "copy", phase)
            if self._verifier.verify(table, run, report):
                _spent(report, "verify", phase)
                return
            phase = _spent(report, "verify", phase)
        self._verifier.raise_mismatch(run)


def _spent(report: RunReport, step: str, since: float) -> float:
    """Add the time since ``since`` to ``step``'s total; the time now, for the next step."""
    now = time.monotonic()
    report.seconds[step] = report.seconds.get(step, 0) + now - since
    return now


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
