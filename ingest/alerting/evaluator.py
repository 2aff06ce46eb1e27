"""Set-based alert evaluation over the ranges that committed ingest batches touched.

The rules, their semantics and every statement live in ``schema/queries/alerting.sql``; this
module only groups readings into touched ranges and runs the statements in one transaction.
Evaluation is idempotent (counts and extremes are recomputed from the stored readings), so a
range evaluated twice, by a retry, a second worker or the sweep, changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ingest.alerting.ranges import series_ranges
from ingest.store import ReadingColumns, ValidatedReading
from schema.sql import queries

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def touched_ranges(
    batches: Iterable[ReadingColumns | Iterable[ValidatedReading]],
) -> list[TouchedRange]:
    """One range per (patient, metric) over all readings of ``batches``.

    Batches of columns (the ingest path) are reduced with numpy: converting them back to one
    object per reading cost the ingest process more CPU than decoding and validating them.
    """
    # key -> [start, end, low, high]
    ranges: dict[tuple[uuid.UUID, int], list[Any]] = {}
    from_columns: list[TouchedRange] = []
    for readings in batches:
        if isinstance(readings, ReadingColumns):
            from_columns.extend(_column_ranges(readings))
            continue
        for r in readings:
            seen = ranges.get((r.patient_id, r.metric_id))
            if seen is None:
                ranges[(r.patient_id, r.metric_id)] = [
                    r.measured_at,
                    r.measured_at,
                    r.value,
                    r.value,
                ]
                continue
            if r.measured_at < seen[0]:
                seen[0] = r.measured_at
            elif r.measured_at > seen[1]:
                seen[1] = r.measured_at
            if r.value < seen[2]:
                seen[2] = r.value
            elif r.value > seen[3]:
                seen[3] = r.value
    objects = [TouchedRange(p, m, *bounds) for (p, m), bounds in ranges.items()]
    return merge_ranges([*objects, *from_columns]) if from_columns else objects


def _column_ranges(columns: ReadingColumns) -> list[TouchedRange]:
    ranges = series_ranges(columns)
    return [
        TouchedRange(
            uuid.UUID(bytes=bytes(patient)),
            metric_id,
            _EPOCH + timedelta(microseconds=start),
            _EPOCH + timedelta(microseconds=end),
            low,
            high,
        )
        for patient, metric_id, start, end, low, high in zip(
            ranges.patient,
            ranges.metric_id.tolist(),
            ranges.start_us.tolist(),
            ranges.end_us.tolist(),
            ranges.low.tolist(),
            ranges.high.tolist(),
            strict=True,
        )
    ]


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
