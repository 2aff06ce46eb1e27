"""Steps 3 and 4: prove the new table holds exactly the old table's rows.

*verify*: per source chunk, in one snapshot, the rows it holds and the rows the new table holds
under the chunk's own dimension constraints: count and an order-independent checksum over every
column; the new table's chunks and their share are the lineage. *reconcile*: rows per UTC day
in both tables, one statement (one snapshot), stored.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from jobs.rechunk.catalog import TableDefinition, q, source_chunks
from jobs.rechunk.errors import VerificationError
from jobs.rechunk.ledger import Ledger
from jobs.rechunk.model import DayCount, Run, RunReport, identifier

log = logging.getLogger(__name__)

# Copy-and-verify rounds before giving up on a chunk that keeps differing.
VERIFY_PASSES = 3


class Verifier:
    """Verifies and reconciles a run's new table against the live one."""

    def __init__(self, conn: psycopg.Connection, ledger: Ledger) -> None:
        self._conn = conn
        self._ledger = ledger

    def verify(self, table: TableDefinition, run: Run, report: RunReport) -> bool:
        """Verify every copied chunk; False when one must be copied again."""
        conn = self._conn
        shadow = identifier(table.schema, run.names.shadow(table.name))
        row_expression = sql.SQL(", ").join(
            sql.Identifier("t", c.name)
            if c.hashable
            else sql.SQL("{}::text").format(sql.Identifier("t", c.name))
            for c in table.columns
            if c.generated == ""
        )
        all_good = True
        # The predicate is read from the catalogue again, never taken back from a table as SQL.
        predicates = {c.name: c.predicate for c in source_chunks(conn, table)}
        for chunk, _recorded in conn.execute(
            q("chunks_to_verify"), {"run_id": run.run_id}
        ).fetchall():
            if chunk not in predicates:
                raise VerificationError(
                    f"run {run.run_id}: source chunk {chunk} was dropped during the run; "
                    f"'rechunk rollback' abandons it"
                )
            if self._verify_chunk(run, chunk, predicates[chunk], shadow, row_expression):
                report.verified_chunks += 1
            else:
                all_good = False
        if not all_good:
            return False
        with conn.transaction():
            if self._ledger.add_chunks(table, run):
                return False  # chunks created meanwhile: copy and verify them too
            conn.execute(q("run_verified"), {"run_id": run.run_id})
        return True

    def _verify_chunk(
        self,
        run: Run,
        chunk: str,
        predicate: str,
        shadow: sql.Identifier,
        row_expression: sql.Composable,
    ) -> bool:
        """Compare one source chunk with its rows in the new table and record the outcome."""
        conn = self._conn
        key = {"run_id": run.run_id, "chunk": chunk}
        with conn.transaction():
            # One snapshot for both sides: the dual write keeps them equal in every one.
            conn.execute(q("repeatable_read"))
            source = conn.execute(
                sql.SQL(q("source_checksum")).format(row=row_expression, chunk=sql.SQL(chunk))
            ).fetchone()
            assert source is not None
            lineage = conn.execute(
                sql.SQL(q("target_checksum")).format(
                    row=row_expression, target=shadow, predicate=sql.SQL(predicate)
                )
            ).fetchall()
            conn.execute(q("forget_lineage"), key)
            for target_chunk, rows, checksum in lineage:
                conn.execute(
                    q("add_lineage"),
                    {
                        **key,
                        "target_chunk": target_chunk,
                        "rows": rows,
                        "checksum": checksum,
                        "operator": self._ledger.operator,
                    },
                )
            outcome = conn.execute(
                q("record_verification"),
                {
                    **key,
                    "source_rows": source[0],
                    "source_checksum": source[1],
                    "target_rows": sum(r[1] for r in lineage),
                    "target_checksum": sum(r[2] for r in lineage),
                },
            ).fetchone()
        assert outcome is not None
        if outcome[0] == "verified":
            return True
        log.warning(
            "chunk differs in the new table; copying it again",
            extra={**key, "source_rows": source[0], "target_rows": sum(r[1] for r in lineage)},
        )
        return False

    def raise_mismatch(self, run: Run) -> None:
        """Give up after VERIFY_PASSES rounds, naming the chunks that still differ."""
        rows = self._conn.execute(q("mismatched_chunks"), {"run_id": run.run_id}).fetchall()
        listed = ", ".join(f"{c} (old {s}, new {t})" for c, s, t in rows) or (
            "chunks that kept appearing"
        )
        raise VerificationError(
            f"run {run.run_id}: the new table still differs after {VERIFY_PASSES} copies of "
            f"{listed}: no cutover. Was the live table changed outside ingest (drop_chunks, "
            f"a rewrite)? 'rechunk rollback' abandons the run"
        )

    def reconcile(self, table: TableDefinition, run: Run) -> list[DayCount]:
        """Rows per UTC day in both tables, stored in the ledger and returned."""
        with self._conn.transaction():
            self._conn.execute(q("forget_reconciliation"), {"run_id": run.run_id})
            self._conn.execute(
                sql.SQL(q("reconcile")).format(
                    time=sql.Identifier(table.time_dimension.column),
                    source=identifier(table.schema, table.name),
                    target=identifier(table.schema, run.names.shadow(table.name)),
                ),
                {"run_id": run.run_id},
            )
        return self._ledger.reconciliation(run.run_id)
