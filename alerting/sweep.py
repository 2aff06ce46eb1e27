"""The periodic alert sweep: missing data, evaluations parked after failing, and outbox
batches no worker has evaluated yet."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from alerting.evaluator import AlertEvaluator, TouchedRange
from alerting.outbox import drain_outbox
from schema.sql import queries

log = logging.getLogger(__name__)

PARKED_PER_SWEEP = 1000


@dataclass(frozen=True)
class SweepResult:
    opened: int  # missing-data alerts opened
    resolved: int  # missing-data alerts resolved because readings resumed
    parked_evaluated: int  # parked ranges evaluated
    outbox_evaluated: int = 0  # outbox batches evaluated (left by processes without a worker)


async def sweep_missing_data(
    conn: asyncpg.Connection, now: datetime, *, evaluator: AlertEvaluator | None = None
) -> SweepResult:
    """Open missing-data alerts as of ``now``, resolve those whose data resumed, and evaluate
    ranges parked by a failed evaluation. Safe to run from several processes at once."""
    q = queries("alerting")
    async with conn.transaction():
        candidates = [
            row["patient_id"] for row in await conn.fetch(q["missing_data_candidates"], now)
        ]
        resumed = await conn.fetch(q["missing_data_resumed"])
        patients: list[uuid.UUID] = sorted(set(candidates) | {row["patient_id"] for row in resumed})
        opened = resolved = 0
        if patients:
            await conn.fetchval(q["lock_patients"], patients)
            # Re-checked under the locks: a reading committed meanwhile is seen here.
            if candidates:
                opened = int(await conn.fetchval(q["missing_data_open"], now, candidates))
            if resumed:
                rows = await conn.fetch(
                    q["resolve_missing_data_for_touched"],
                    [row["patient_id"] for row in resumed],
                    [row["metric_id"] for row in resumed],
                )
                resolved = len(rows)
    parked = await evaluate_parked(conn, evaluator or AlertEvaluator())
    outbox = await drain_outbox(conn, evaluator or AlertEvaluator())
    if opened or resolved or parked or outbox:
        log.info(
            "alert sweep",
            extra={
                "opened": opened,
                "resolved": resolved,
                "parked_evaluated": parked,
                "outbox_evaluated": outbox,
            },
        )
    return SweepResult(
        opened=opened, resolved=resolved, parked_evaluated=parked, outbox_evaluated=outbox
    )


async def evaluate_parked(conn: asyncpg.Connection, evaluator: AlertEvaluator) -> int:
    """Evaluate parked ranges; each claimed batch is deleted in the transaction evaluating it."""
    q = queries("alerting")
    total = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(q["take_parked_evaluations"], PARKED_PER_SWEEP)
            if not rows:
                return total
            touched = [
                TouchedRange(r["patient_id"], r["metric_id"], r["range_start"], r["range_end"])
                for r in rows
            ]
            await evaluator.evaluate_in_transaction(conn, touched)
        total += len(rows)
        if len(rows) < PARKED_PER_SWEEP:
            return total
