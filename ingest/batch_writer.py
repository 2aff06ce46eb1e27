"""One batch, one transaction: binary COPY of the readings, the batch row, the alert outbox.

Exactly-once storage under at-least-once delivery: the readings hypertable's natural key
(device, metric, measured_at) decides. Almost every batch holds only new readings and is
COPYed straight into the hypertable; a batch holding a reading that is already stored rolls
back and goes the merge path, which stages the batch, inserts what is new and classifies the
rest (``ingest.outcomes``). What to do when a transaction fails is the caller's business
(``ingest.retrying``): nothing here retries.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from ingest.metrics import IngestMetrics
from ingest.outcomes import (
    BatchTotals,
    IngestOutcome,
    QuarantineRow,
    map_outcomes,
    recognise_repeats,
)
from ingest.requests import IngestRequest
from ingest.series import series_ranges
from ingest.store import (
    EPOCH,
    READING_COPY_COLUMNS,
    STAGE_COPY_COLUMNS,
    ReadingColumns,
    Source,
    epoch_us,
    ingestor_name,
)
from schema.sql import queries

log = logging.getLogger(__name__)

READING_COLUMNS = READING_COPY_COLUMNS
# The insert_batch statement's outbox arguments for a batch that touched no series.
_NO_OUTBOX_ROW = (None,) * 6


class BatchWriter:
    """Writes batches of requests, each in one transaction on a connection it is given."""

    def __init__(
        self, *, source: Source, alert_outbox: bool, metrics: IngestMetrics | None = None
    ) -> None:
        """``alert_outbox``: write each batch's touched series to ``rpm.alert_outbox`` in the
        batch's transaction, for the alert workers."""
        self._source = source
        self._alert_outbox = alert_outbox
        self._metrics = metrics
        self._ingestor = ingestor_name()
        self._q = queries("ingest_commit")

    async def write(
        self, conn: asyncpg.Connection, requests: Sequence[IngestRequest]
    ) -> list[IngestOutcome]:
        """Commit ``requests`` as one batch; each request's outcome, in order.

        Raises what the database raised; the transaction is then rolled back and the
        session's state unknown (the caller gives the connection back).
        """
        # The readings of the whole batch, request after request, as one set of columns.
        columns = ReadingColumns.concat([request.columns for request in requests])
        rows = len(columns)
        started = time.monotonic()
        # Before the transaction: nothing that takes CPU while it holds locks.
        outbox = (
            series_ranges(columns).outbox_arguments()
            if self._alert_outbox and rows
            else _NO_OUTBOX_ROW
        )
        committed = await self._write_new(conn, requests, columns, outbox) if rows else None
        if committed is None:
            committed = await self._write_merged(conn, requests, columns, outbox)
        batch_id, outcomes = committed
        elapsed = time.monotonic() - started
        if self._metrics:
            self._metrics.batch_rows.observe(rows)
            self._metrics.commit_seconds.observe(elapsed)
        log.debug(
            "ingest batch committed",
            extra={
                "batch_id": batch_id,
                "requests": len(requests),
                "rows": rows,
                "ms": round(elapsed * 1000, 1),
            },
        )
        return outcomes

    async def _write_new(
        self,
        conn: asyncpg.Connection,
        requests: Sequence[IngestRequest],
        columns: ReadingColumns,
        outbox: Sequence[object],
    ) -> tuple[int, list[IngestOutcome]] | None:
        """The fast path: almost every batch holds only new readings, so COPY them straight
        into the hypertable. None (and nothing written) if a reading is stored already.

        Each statement here is a round trip that every caller of the batch waits for, so
        there are few: BEGIN, the batch id (and the invalidation threshold), the COPY, the
        batch row and its alert outbox row (one statement; with the outcome of a batch of new
        readings; last, so that a batch stopped
        just before COMMIT has its readings COPYed, which the fault tests rely on), COMMIT.
        A unique violation on the natural key rolls the whole transaction back; the batch
        then goes the merge path, which classifies every reading. (A savepoint around the
        COPY would keep the transaction, at two more round trips for every batch.)
        """
        try:
            async with conn.transaction():
                batch_id, threshold = await conn.fetchrow(self._q["begin_batch"])
                await conn.copy_to_table(
                    "readings",
                    schema_name="rpm",
                    # memoryview: asyncpg would take bytes for a file name
                    source=memoryview(columns.copy_stream(batch_id)),
                    columns=READING_COLUMNS,
                    format="binary",
                )
                await self._record_late(conn, columns, batch_id, threshold)
                outcomes, quarantine_rows = map_outcomes(
                    requests, batch_id, [], source=self._source
                )
                outcomes = await self._finish_batch(
                    conn,
                    batch_id,
                    BatchTotals(len(columns), 0, 0),
                    requests,
                    outcomes,
                    quarantine_rows,
                    outbox,
                )
        except asyncpg.UniqueViolationError:
            return None
        return batch_id, outcomes

    async def _write_merged(
        self,
        conn: asyncpg.Connection,
        requests: Sequence[IngestRequest],
        columns: ReadingColumns,
        outbox: Sequence[object],
    ) -> tuple[int, list[IngestOutcome]]:
        """The deduplicating path (and batches that carry only quarantine rows)."""
        async with conn.transaction():
            batch_id, _ = await conn.fetchrow(self._q["begin_batch"])
            not_stored: list[asyncpg.Record] = []
            if len(columns):
                not_stored = await self._merge(conn, columns, batch_id)
            outcomes, quarantine_rows = map_outcomes(
                requests, batch_id, not_stored, source=self._source
            )
            # Duplicates included in the outbox: evaluating a range again changes nothing.
            outcomes = await self._finish_batch(
                conn,
                batch_id,
                BatchTotals.of(outcomes),
                requests,
                outcomes,
                quarantine_rows,
                outbox,
            )
        return batch_id, outcomes

    async def _finish_batch(
        self,
        conn: asyncpg.Connection,
        batch_id: int,
        totals: BatchTotals,
        requests: Sequence[IngestRequest],
        outcomes: list[IngestOutcome],
        quarantine_rows: list[QuarantineRow],
        outbox: Sequence[object],
    ) -> list[IngestOutcome]:
        """The quarantine rows (each raw payload once), then the batch row with its alert
        outbox row; ``outcomes`` with the rejected readings that were quarantined already."""
        quarantined = 0
        if quarantine_rows:
            inserted = await self._write_quarantine(conn, batch_id, requests, quarantine_rows)
            outcomes = recognise_repeats(outcomes, quarantine_rows, inserted)
            quarantined = len(inserted)
        await conn.execute(
            self._q["insert_batch"],
            batch_id,
            self._source,
            self._ingestor,
            totals.stored,
            totals.duplicates,
            totals.conflicts,
            quarantined,
            *outbox,
        )
        return outcomes

    async def _write_quarantine(
        self,
        conn: asyncpg.Connection,
        batch_id: int,
        requests: Sequence[IngestRequest],
        rows: list[QuarantineRow],
    ) -> set[tuple[bytes, int | None, str]]:
        """Write the payloads and the rows; the keys of the rows that were new."""
        payloads: dict[bytes, IngestRequest] = {}
        for row in rows:
            payloads.setdefault(row.payload_sha256, requests[row.request_number])
        await conn.execute(
            self._q["insert_payloads"],
            list(payloads),
            [request.raw_payload for request in payloads.values()],
            [_received_at(request) for request in payloads.values()],
        )
        # Columns of QUARANTINE_COLUMNS but source (1) and batch_id (8), the batch's own.
        arrays = [[row.values[column] for row in rows] for column in (0, 2, 3, 4, 5, 6, 7)]
        inserted = await conn.fetch(
            self._q["insert_quarantine"],
            arrays[0],
            self._source,
            *arrays[1:],
            batch_id,
        )
        return {(bytes(r["payload_sha256"]), r["reading_index"], r["reason"]) for r in inserted}

    async def _merge(
        self, conn: asyncpg.Connection, columns: ReadingColumns, batch_id: int
    ) -> list[asyncpg.Record]:
        """The deduplicating path: stage, merge on the natural key, classify what was not new."""
        await conn.execute(self._q["create_stage"])
        await conn.copy_to_table(
            "ingest_stage",
            source=memoryview(columns.stage_stream()),
            columns=STAGE_COPY_COLUMNS,
            format="binary",
        )
        inserted = int(await conn.fetchval(self._q["merge_stage"], batch_id))
        if inserted == len(columns):
            return []
        return list(await conn.fetch(self._q["classify_not_stored"], batch_id))

    async def _record_late(
        self,
        conn: asyncpg.Connection,
        columns: ReadingColumns,
        batch_id: int,
        threshold: datetime | None,
    ) -> None:
        """Invalidate rolled-up ranges that this batch's late readings fall into."""
        if threshold is None:
            return
        late = np.flatnonzero(columns.measured_us < epoch_us(threshold))
        if not len(late):
            return
        ranges: dict[tuple[uuid.UUID, int], tuple[int, int]] = {}
        # Late readings are few (devices catching up); a loop over them is fine.
        for patient, metric_id, measured in zip(
            columns.patient[late],
            columns.metric_id[late].tolist(),
            columns.measured_us[late].tolist(),
            strict=True,
        ):
            key = (uuid.UUID(bytes=patient.tobytes()), metric_id)
            low, high = ranges.get(key, (measured, measured))
            ranges[key] = (min(low, measured), max(high, measured))
        if ranges:
            await conn.executemany(
                self._q["insert_invalidation"],
                [
                    (p, m, _datetime(low), _datetime(high), batch_id)
                    for (p, m), (low, high) in ranges.items()
                ],
            )


def _received_at(request: IngestRequest) -> datetime:
    return datetime.fromtimestamp(request.received_at, UTC)


def _datetime(epoch_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=epoch_us)
