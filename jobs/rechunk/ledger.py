"""The ledger (``rpm.rechunk_runs``, ``rpm.rechunk_chunks``, ``rpm.rechunk_reconciliation``):
what a run is, which source chunks it knows, and what it found.

The per-batch and per-chunk progress rows are written by the copy and the verification
themselves, in the same transaction as the rows they describe; this module keeps the run's
own records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from jobs.rechunk.catalog import Dimension, TableDefinition, q, source_chunks
from jobs.rechunk.model import DayCount, Kind, Run


class Ledger:
    """Reads and writes a database's re-chunk ledger on the run's connection."""

    def __init__(self, conn: psycopg.Connection, operator: str) -> None:
        self._conn = conn
        self.operator = operator

    def active_run(self, schema: str, name: str) -> Run | None:
        """The run copying or cut over for ``schema.name``, if any (at most one)."""
        row = self._conn.execute(q("active_run"), {"schema": schema, "name": name}).fetchone()
        if row is None:
            return None
        run_id, kind, _shadow, _retired, _source, target, state = row
        return Run(int(run_id), kind, tuple(Dimension.from_json(d) for d in target), state)

    def open_run(self, table: TableDefinition, kind: Kind, target: Sequence[Dimension]) -> Run:
        """A new run row, named after its id (inside the caller's transaction)."""
        row = self._conn.execute(
            q("insert_run"),
            {
                "kind": kind,
                "schema": table.schema,
                "name": table.name,
                "source_dimensions": json.dumps([d.as_json() for d in table.dimensions]),
                "target_dimensions": json.dumps([d.as_json() for d in target]),
                "operator": self.operator,
            },
        ).fetchone()
        assert row is not None
        run = Run(int(row[0]), kind, tuple(target), "copying")
        self._conn.execute(
            q("name_run"),
            {
                "run_id": run.run_id,
                "shadow_name": run.names.shadow(table.name),
                "retired_name": run.names.retired(table.name),
            },
        )
        return run

    def set_state(self, run: Run, state: str) -> None:
        self._conn.execute(q("set_run_state"), {"run_id": run.run_id, "state": state})

    def add_chunks(self, table: TableDefinition, run: Run) -> int:
        """Record source chunks the ledger does not know yet (new ones appear during a run)."""
        added = 0
        for chunk in source_chunks(self._conn, table):
            cursor = self._conn.execute(
                q("add_chunk"),
                {
                    "run_id": run.run_id,
                    "chunk": chunk.name,
                    "range_start": chunk.range_start,
                    "range_end": chunk.range_end,
                    "predicate": chunk.predicate,
                    "operator": self.operator,
                },
            )
            added += cursor.rowcount
        return added

    def runs(self) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(q("runs"), {}).fetchall())

    def reconciliation(self, run_id: int) -> list[DayCount]:
        rows = self._conn.execute(q("reconciliation"), {"run_id": run_id}).fetchall()
        return [DayCount(*r) for r in rows]
