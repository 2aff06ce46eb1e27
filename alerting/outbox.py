"""Consuming ``rpm.alert_outbox``: claim committed batches, evaluate them, delete them; one
transaction, so a batch's evaluation is never lost and never half done.

The group committer writes one outbox row per batch in the batch's own transaction (its
touched series, see ``ingest.series``). Any number of workers, in any processes, may
consume: ``FOR UPDATE SKIP LOCKED`` gives each its own batches, the evaluator's per-patient
advisory locks serialise evaluations of the same patient, and evaluation recomputes from the
stored readings, so the order in which batches are evaluated does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from alerting.evaluator import AlertEvaluator, EvaluationResult, TouchedRange
from schema.sql import queries

# Batches claimed per evaluation transaction: under load many batches share one evaluation;
# the bound keeps one transaction (and the patient locks it holds) short.
BATCHES_PER_EVALUATION = 256


@dataclass(frozen=True)
class OutboxPass:
    """One evaluation transaction over claimed outbox batches."""

    batch_ids: tuple[int, ...]
    series: int
    result: EvaluationResult


async def evaluate_outbox_once(
    conn: asyncpg.Connection,
    evaluator: AlertEvaluator,
    *,
    limit: int = BATCHES_PER_EVALUATION,
    claimed: list[int] | None = None,
) -> OutboxPass | None:
    """Claim up to ``limit`` batches and evaluate them in one transaction; None if there were
    none. Raises what evaluation raises, and then the batches stay in the outbox; ``claimed``
    (if given) then holds their ids, for parking batches whose evaluation keeps failing."""
    async with conn.transaction():
        rows = await conn.fetch(queries("alerting")["claim_outbox"], limit)
        if not rows:
            return None
        batch_ids = sorted({batch_id for r in rows for batch_id in r["batch_ids"]})
        if claimed is not None:
            claimed[:] = batch_ids
        touched = [
            TouchedRange(
                r["patient_id"],
                r["metric_id"],
                r["range_start"],
                r["range_end"],
                r["low"],
                r["high"],
            )
            for r in rows
        ]
        result = await evaluator.evaluate_in_transaction(conn, touched)
    return OutboxPass(tuple(batch_ids), len(touched), result)


async def park_outbox(conn: asyncpg.Connection, batch_ids: list[int], error: str) -> None:
    """Move ``batch_ids`` to the parked evaluations (the sweep retries them)."""
    await conn.execute(queries("alerting")["park_outbox"], batch_ids, error)


async def drain_outbox(
    conn: asyncpg.Connection,
    evaluator: AlertEvaluator,
    *,
    limit: int = BATCHES_PER_EVALUATION,
) -> int:
    """Evaluate outbox batches until none is left; the number evaluated."""
    total = 0
    while (done := await evaluate_outbox_once(conn, evaluator, limit=limit)) is not None:
        total += len(done.batch_ids)
    return total
