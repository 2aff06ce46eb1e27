"""Step 2, the copy: every row committed before the dual write began, carried into the new
table in ranges of heap blocks, each batch committed with its ledger row so that a killed run
resumes at the next block."""

from __future__ import annotations

import logging
import math

import psycopg
from psycopg import sql

from jobs.rechunk.catalog import TableDefinition, q, source_chunks
from jobs.rechunk.errors import VerificationError
from jobs.rechunk.ledger import Ledger
from jobs.rechunk.model import Options, Run, RunReport, identifier

log = logging.getLogger(__name__)

# Rows per heap block when the chunk has never been analysed (a reading is about 110 bytes).
_DEFAULT_ROWS_PER_BLOCK = 70.0


class Copier:
    """Copies source chunks into the new table; one per process, for the pause hook's count."""

    def __init__(self, conn: psycopg.Connection, options: Options, ledger: Ledger) -> None:
        self._conn = conn
        self._options = options
        self._ledger = ledger
        self._batches_here = 0

    def copy(self, table: TableDefinition, run: Run, report: RunReport) -> None:
        """Copy every chunk the ledger has not finished, including chunks created meanwhile."""
        shadow = identifier(table.schema, run.names.shadow(table.name))
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.copy_columns)
        while True:
            with self._conn.transaction():
                self._ledger.add_chunks(table, run)
            pending = self._conn.execute(q("chunks_to_copy"), {"run_id": run.run_id}).fetchall()
            if not pending:
                return
            # Chunk names are used as SQL only when the catalogue vouches for them.
            existing = {c.name for c in source_chunks(self._conn, table)}
            for chunk, state, total_blocks, next_block in pending:
                if chunk not in existing:
                    raise VerificationError(
                        f"run {run.run_id}: source chunk {chunk} was dropped during the run; "
                        f"'rechunk rollback' abandons it"
                    )
                self._copy_chunk(
                    run, chunk, state, total_blocks, next_block, shadow, columns, report
                )

    def _copy_chunk(
        self,
        run: Run,
        chunk: str,
        state: str,
        total_blocks: int | None,
        next_block: int,
        shadow: sql.Identifier,
        columns: sql.Composable,
        report: RunReport,
    ) -> None:
        conn = self._conn
        key = {"run_id": run.run_id, "chunk": chunk}
        row = conn.execute(q("chunk_blocks"), {"chunk": chunk}).fetchone()
        assert row is not None
        blocks_now, rows_per_block = int(row[0]), row[1]
        if state != "copying" or total_blocks is None:
            # Every row committed before the dual write began lies below this block; rows
            # added since were written to the new table by the trigger.
            with conn.transaction():
                conn.execute(q("start_chunk"), {**key, "total_blocks": blocks_now})
            total_blocks, next_block = blocks_now, 0
        step = max(
            1, math.ceil(self._options.batch_rows / (rows_per_block or _DEFAULT_ROWS_PER_BLOCK))
        )
        parts = {"target": shadow, "columns": columns, "chunk": sql.SQL(chunk)}
        fast = sql.SQL(q("copy_batch")).format(**parts)
        merge = sql.SQL(q("merge_batch")).format(**parts)
        merged = 0
        while next_block < total_blocks:
            last = min(total_blocks, next_block + step)
            rows, was_merged = self._copy_batch(key, fast, merge, next_block, last)
            merged += was_merged
            self._batches_here += 1
            report.batches += 1
            report.copied_rows += rows
            self._pause("between")
            next_block = last
        with conn.transaction():
            conn.execute(q("finish_chunk"), key)
        report.chunks += 1
        log.info(
            "chunk copied",
            extra={"run_id": run.run_id, "chunk": chunk, "merged_batches": merged},
        )

    def _copy_batch(
        self,
        key: dict[str, object],
        fast: sql.Composed,
        merge: sql.Composed,
        first: int,
        last: int,
    ) -> tuple[int, bool]:
        """Blocks [first, last) and the ledger's progress in one transaction: (rows, merged)."""
        conn = self._conn
        blocks = {"first": f"({first},0)", "last": f"({last},0)"}
        merged = False
        with conn.transaction():
            conn.execute(q("asynchronous_commit"), {})
            try:
                with conn.transaction():  # a savepoint, for the fallback
                    cursor = conn.execute(fast, blocks)
            except psycopg.errors.UniqueViolation:
                cursor = conn.execute(merge, blocks)
                merged = True
            rows = max(cursor.rowcount, 0)
            self._pause("inside")
            conn.execute(q("advance_chunk"), {**key, "next_block": last, "rows": rows})
        return rows, merged

    def _pause(self, where: str) -> None:
        if self._options.pause is not None:
            self._options.pause(where, self._batches_here)
