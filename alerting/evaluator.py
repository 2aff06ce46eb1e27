"""Set-based alert evaluation over the ranges that committed ingest batches touched.

The rules, their semantics and every statement live in ``schema/queries/alerting.sql``; this
module merges the touched ranges it is given (ingest computes them) and runs the statements
in one transaction.
Evaluation is idempotent (counts and extremes are recomputed from the stored readings), so a
range evaluated twice, by a retry, a second worker or the sweep, changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from schema.sql import queries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TouchedRange:
    """The oldest and newest measurement time of readings just committed for one series, and
    their lowest and highest value (None: unknown), which lets evaluation skip every rule that
    none of them can breach."""

    patient_id: uuid.UUID
    metric_id: int
    start: datetime
    end: datetime
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class EvaluationResult:
    extended: int  # active alerts that absorbed new breaches
    resolved: int  # alerts auto-resolved (back in range, or data resumed)
    opened: tuple[uuid.UUID, ...]  # new alerts (open, or recorded as already over)


def merge_ranges(ranges: Iterable[TouchedRange]) -> list[TouchedRange]:
    """Coalesce ranges of the same series (several batches evaluated at once)."""
    merged: dict[tuple[uuid.UUID, int], TouchedRange] = {}
    for r in ranges:
        key = (r.patient_id, r.metric_id)
        seen = merged.get(key)
        if seen is None:
            merged[key] = r
            continue
        unknown = None in (seen.low, seen.high, r.low, r.high)
        merged[key] = TouchedRange(
            r.patient_id,
            r.metric_id,
            min(seen.start, r.start),
            max(seen.end, r.end),
            None if unknown else min(seen.low, r.low),  # type: ignore[type-var]
            None if unknown else max(seen.high, r.high),  # type: ignore[type-var]
        )
    return list(merged.values())


def range_arrays(
    touched: Sequence[TouchedRange],
) -> tuple[list[uuid.UUID], list[int], list[datetime], list[datetime]]:
    return (
        [t.patient_id for t in touched],
        [t.metric_id for t in touched],
        [t.start for t in touched],
        [t.end for t in touched],
    )


class AlertEvaluator:
    """Evaluates above/below rules (and data-resumed for missing-data rules) for touched ranges."""

    def __init__(self) -> None:
        self._q = queries("alerting")

    async def evaluate(
        self, conn: asyncpg.Connection, touched: Sequence[TouchedRange]
    ) -> EvaluationResult:
        """Evaluate ``touched`` in its own transaction (a savepoint if one is open)."""
        if not touched:
            return EvaluationResult(0, 0, ())
        async with conn.transaction():
            return await self.evaluate_in_transaction(conn, touched)

    async def evaluate_in_transaction(
        self, conn: asyncpg.Connection, touched: Sequence[TouchedRange]
    ) -> EvaluationResult:
        patients, metrics, starts, ends = range_arrays(touched)
        q = self._q
        await conn.fetchval(q["lock_patients"], patients)
        await conn.execute(q["create_window"])
        status = await conn.execute(
            q["fill_window"],
            patients,
            metrics,
            starts,
            ends,
            [t.low for t in touched],
            [t.high for t in touched],
        )
        extended: list[asyncpg.Record] = []
        resolved: list[asyncpg.Record] = []
        opened: list[asyncpg.Record] = []
        # An empty window (the usual case: no new value breaches a rule and no alert of the
        # series is active) has nothing to extend, resolve or open: skip three statements.
        if _rows_affected(status):
            extended = await conn.fetch(q["extend_active_alerts"])
            resolved = await conn.fetch(q["resolve_back_in_range"])
            opened = await conn.fetch(q["open_new_alerts"])
        resumed = await conn.fetch(q["resolve_missing_data_for_touched"], patients, metrics)
        result = EvaluationResult(
            extended=len(extended),
            resolved=len(resolved) + len(resumed),
            opened=tuple(row["alert_id"] for row in opened),
        )
        if result.opened or result.resolved:
            log.info(
                "alerts changed",
                extra={
                    "opened": len(result.opened),
                    "resolved": result.resolved,
                    "extended": result.extended,
                    "series": len(touched),
                },
            )
        return result


def _rows_affected(command_status: str) -> int:
    """The row count of a command status such as ``INSERT 0 42``."""
    return int(command_status.rsplit(" ", 1)[-1])
