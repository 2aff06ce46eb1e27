"""Group commit: many concurrent requests or messages, one binary COPY, one transaction.

Callers ``submit`` an :class:`IngestRequest` (the validated readings and the quarantine entries
of one HTTP request or MQTT message) and are answered only after the batch holding it has
COMMITted, so an HTTP 2xx or an MQTT PUBACK always follows durable storage.

Exactly-once storage under at-least-once delivery: the readings hypertable's natural key
(device, metric, measured_at) decides. A retried request or redelivered message finds its rows
already stored and is counted as duplicates; the same key with a *different* value is a
conflict and goes to the quarantine, never overwriting or dropping either value. A batch whose
connection breaks is retried whole with backoff: if its COMMIT had in fact landed, the retry
sees duplicates, so nothing is written twice.

Backpressure: at most ``max_pending_rows`` rows wait; beyond that ``submit`` raises
:class:`BufferFullError` at once (HTTP answers 503, MQTT stops acknowledging).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from ingest.metrics import IngestMetrics
from ingest.series import series_ranges
from ingest.store import (
    EPOCH,
    READING_COPY_COLUMNS,
    STAGE_COPY_COLUMNS,
    ReadingColumns,
    Source,
    ValidatedReading,
    epoch_us,
    ingestor_name,
)
from schema.errors import ErrorKind, classify, sqlstate
from schema.sql import queries

log = logging.getLogger(__name__)

READING_COLUMNS = READING_COPY_COLUMNS
_QUARANTINE_COLUMNS = (
    "received_at",
    "source",
    "reason",
    "detail",
    "raw_payload",
    "reading_index",
    "claimed_device",
    "topic",
    "batch_id",
)
ACCEPTED_SYNCHRONOUS_COMMIT = ("on", "remote_apply")
# Optional post-commit hook (the in-process alert worker): called after each committed batch's
# callers were answered, to say the alert outbox has work. It must return at once, never raise.
PostCommitHook = Callable[[], None]
_NO_OUTBOX_ROW = (None,) * 6


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached right now; nothing was stored or acknowledged."""


class BufferFullError(RuntimeError):
    """The committer holds as many rows as it may; try again later (HTTP 503, MQTT no ack)."""


class UnsafeDatabaseSettingsError(RuntimeError):
    """The database would acknowledge commits that a crash could still lose."""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A received reading (or whole payload) that will not be stored, with why."""

    reason: str
    detail: str
    reading_index: int | None


@dataclass(frozen=True)
class IngestRequest:
    """One HTTP request or MQTT message, validated.

    ``readings`` may be given as columns (the ingest path) or as ValidatedReading objects;
    the committer only uses ``columns``.
    """

    readings: ReadingColumns | Sequence[ValidatedReading]
    # reading_indexes[i]: position in the payload of reading i (for per-reading answers)
    reading_indexes: Sequence[int]
    quarantine: Sequence[QuarantineEntry]
    raw_payload: bytes
    received_at: float  # time.time() when it arrived; quarantine rows record it
    claimed_device: str | None = None
    topic: str | None = None
    columns: ReadingColumns = field(init=False, repr=False)

    def __post_init__(self) -> None:
        readings = self.readings
        columns = (
            readings
            if isinstance(readings, ReadingColumns)
            else ReadingColumns.from_readings(readings)
        )
        object.__setattr__(self, "columns", columns)  # derived once; the dataclass is frozen


@dataclass(frozen=True)
class Conflict:
    reading_index: int
    stored_value: float
    received_value: float

    @property
    def detail(self) -> str:
        return (
            f"a different value ({self.stored_value:g}) is already stored for this device, "
            f"metric and time; received {self.received_value:g}"
        )


@dataclass(frozen=True)
class IngestOutcome:
    """What became of one request: every reading is stored, a duplicate, or quarantined."""

    batch_id: int
    stored: int
    duplicates: int
    conflicts: tuple[Conflict, ...]
    quarantined: int  # validation rejections, conflicts and refused readings
    # Readings the database refused although they passed validation (quarantined).
    refused: tuple[QuarantineEntry, ...] = ()


@dataclass
class _Pending:
    request: IngestRequest
    future: asyncio.Future[IngestOutcome]
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        # At least 1: a request that only carries quarantine rows still occupies the buffer.
        self.rows = max(1, len(self.request.columns))


class GroupCommitter:
    """Gathers requests into batches by size and time and commits each batch once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        source: Source,
        max_batch_rows: int = 5000,
        max_delay_s: float = 0.01,
        max_pending_rows: int = 100_000,
        workers: int = 2,
        max_backoff_s: float = 5.0,
        metrics: IngestMetrics | None = None,
        alert_outbox: bool = False,
        post_commit: PostCommitHook | None = None,
    ) -> None:
        """``alert_outbox``: write each batch's touched series to ``rpm.alert_outbox`` in the
        batch's transaction, for the alert workers (ingesting processes always do)."""
        self._pool = pool
        self._alert_outbox = alert_outbox
        self._post_commit = post_commit
        self._source = source
        self._max_batch_rows = max_batch_rows
        self._max_delay_s = max_delay_s
        self._max_pending_rows = max_pending_rows
        self._worker_count = workers
        self._max_backoff_s = max_backoff_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._pending_rows = 0
        self._workers: list[asyncio.Task[None]] = []
        self._ingestor = ingestor_name()
        self._q = queries("ingest_commit")
        self._metrics = metrics
        self._committing = 0  # batches being committed right now
        self._held: dict[asyncio.Task[None] | None, asyncpg.Connection] = {}
        self._commit_finished = asyncio.Event()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def start(self) -> None:
        await check_durability(self._pool)
        self._workers = [
            asyncio.create_task(self._work(), name=f"group-commit-{n}")
            for n in range(self._worker_count)
        ]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Commit what is queued (waiting at most ``grace_s``), then stop the workers.

        During a database outage the queue never drains; the workers are then cancelled and
        every caller still waiting is told the database is unavailable (nothing it was told
        is stored is lost, and what it was not told about it may safely retry).
        """
        try:
            await asyncio.wait_for(self._queue.join(), grace_s)
        except TimeoutError:
            log.warning("stopping with %d readings not committed", self._pending_rows)
        finally:
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []

    async def submit(self, request: IngestRequest) -> IngestOutcome:
        """Queue ``request`` and return once its batch has committed."""
        rows = len(request.columns)
        # A request bigger than the whole buffer is still admitted into an empty buffer, or it
        # could never be stored.
        if self._pending_rows and self._pending_rows + rows > self._max_pending_rows:
            if self._metrics:
                self._metrics.buffer_full.labels(self._source).inc()
            raise BufferFullError(
                f"{self._pending_rows} readings are waiting to be committed "
                f"(limit {self._max_pending_rows})"
            )
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        self._pending_rows += rows
        if self._metrics:
            self._metrics.buffer_rows.set(self._pending_rows)
        await self._queue.put(pending)
        return await pending.future

    async def _next_batch(self) -> list[_Pending]:
        """Everything queued, up to ``max_batch_rows``; waits for more only while another
        batch is committing.

        Waiting pays only when the database is busy anyway: then the requests that arrive
        meanwhile share one transaction instead of each paying for its own. When no commit is
        in flight, waiting for stragglers only adds latency -- and when the callers cannot send
        more until they are answered (a client waiting for its 200, MQTT's in-flight window),
        nothing more can arrive, so a fixed delay would be paid by every batch.
        """
        batch = [await self._queue.get()]
        rows = batch[0].rows
        deadline: float | None = None
        while rows < self._max_batch_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if not self._committing:
                    break
                if deadline is None:
                    deadline = time.monotonic() + self._max_delay_s
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                next_item = await self._get_while_committing(remaining)
                if next_item is None:
                    break
                item = next_item
            batch.append(item)
            rows += item.rows
        return batch

    async def _get_while_committing(self, timeout: float) -> _Pending | None:
        """The next request, or None once ``timeout`` passed or no commit is in flight."""
        self._commit_finished.clear()
        getter = asyncio.ensure_future(self._queue.get())
        finished = asyncio.ensure_future(self._commit_finished.wait())
        try:
            await asyncio.wait({getter, finished}, timeout=timeout, return_when=FIRST_COMPLETED)
        finally:
            finished.cancel()
            if not getter.done():
                getter.cancel()
                # A get that completed while being cancelled still took an item: keep it.
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _work(self) -> None:
        try:
            await self._work_batches()
        finally:
            await self._give_back_connection()

    async def _work_batches(self) -> None:
        while True:
            batch = await self._next_batch()
            self._committing += 1
            try:
                outcomes = await self._commit_with_retry(batch)
                for pending, outcome in zip(batch, outcomes, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(outcome)
                if self._post_commit is not None:  # wakes the alert worker, after the answers
                    self._post_commit()
            except Exception as exc:  # answered to every waiting caller, never swallowed
                log.exception("ingest batch failed permanently")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(
                            DatabaseUnavailableError("ingest stopped before this was committed")
                        )
                raise
            finally:
                self._committing -= 1
                self._commit_finished.set()
                for pending in batch:
                    self._pending_rows -= pending.rows
                    self._queue.task_done()
                if self._metrics:
                    self._metrics.buffer_rows.set(self._pending_rows)

    async def _commit_with_retry(self, batch: list[_Pending]) -> list[IngestOutcome]:
        backoff = 0.05
        while True:
            try:
                return await self._commit(batch)
            except Exception as exc:
                kind = classify(exc)
                if kind is ErrorKind.DATA:
                    # Validation should have caught this. Isolate the request the database
                    # refused so the rest of the batch is stored and the refused readings are
                    # quarantined: never retried forever (a poison message), never dropped.
                    return await self._isolate(batch, exc)
                code = sqlstate(exc)
                if kind is ErrorKind.DEFECT and code is None:
                    raise  # a defect in this process, not an answer from the database
                # Transient, or the database refusing for a reason unrelated to the data (a
                # missing privilege, a read-only standby after a failover): the callers are
                # answered only once their readings are durable, so the batch waits for the
                # cause to go away rather than failing or quarantining valid readings.
                log.log(
                    logging.WARNING if kind is ErrorKind.TRANSIENT else logging.ERROR,
                    "database %s error, retrying ingest batch in %.2fs: %s",
                    kind,
                    backoff,
                    exc,
                    extra={
                        "sqlstate": code,
                        "requests": len(batch),
                        "rows": sum(p.rows for p in batch),
                    },
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    async def _isolate(self, batch: list[_Pending], error: Exception) -> list[IngestOutcome]:
        if len(batch) > 1:
            return [(await self._commit_with_retry([pending]))[0] for pending in batch]
        request = batch[0].request
        if not len(request.columns):
            # Only quarantine rows left, and the database refuses even those: a defect here,
            # not bad input. Fail loudly rather than loop.
            raise error
        log.warning(
            "database refused a validated request; quarantining its readings: %s",
            error,
            extra={"sqlstate": sqlstate(error), "readings": len(request.columns)},
        )
        code = sqlstate(error) or type(error).__name__  # a driver-side refusal has no SQLSTATE
        # One entry per payload position (a blood-pressure panel is two readings, one entry).
        refused = tuple(
            QuarantineEntry("rejected_by_database", f"{code}: {error}", index)
            for index in dict.fromkeys(request.reading_indexes)
        )
        fallback = replace(
            request, readings=(), reading_indexes=(), quarantine=(*request.quarantine, *refused)
        )
        (outcome,) = await self._commit_with_retry([_Pending(fallback, batch[0].future)])
        return [replace(outcome, refused=refused)]

    async def _commit(self, batch: list[_Pending]) -> list[IngestOutcome]:
        # The readings of the whole batch, request after request, as one set of columns.
        columns = ReadingColumns.concat([pending.request.columns for pending in batch])
        rows = len(columns)
        started = time.monotonic()
        # Before the transaction: nothing that takes CPU while it holds locks.
        outbox = (
            series_ranges(columns).outbox_arguments()
            if self._alert_outbox and rows
            else _NO_OUTBOX_ROW
        )
        try:
            conn = await self._connection()
            committed = await self._commit_new(conn, batch, columns, outbox) if rows else None
            if committed is None:
                committed = await self._commit_merged(conn, batch, columns, outbox)
        except BaseException:
            # The session's state is unknown after an error: give the connection back (the
            # pool resets it, or discards it if it is broken) and take a fresh one next time.
            await self._give_back_connection()
            raise
        batch_id, outcomes = committed
        elapsed = time.monotonic() - started
        if self._metrics:
            self._metrics.batch_rows.observe(rows)
            self._metrics.commit_seconds.observe(elapsed)
        log.debug(
            "ingest batch committed",
            extra={
                "batch_id": batch_id,
                "requests": len(batch),
                "rows": rows,
                "ms": round(elapsed * 1000, 1),
            },
        )
        return outcomes

    async def _connection(self) -> asyncpg.Connection:
        """The calling worker's own connection, kept from batch to batch.

        Returning a connection to the pool after every batch costs a round trip (the pool
        resets the session: RESET ALL, UNLISTEN, ...) that every caller of the batch would
        wait for; a batch leaves no session state behind (its transaction is over), so the
        worker keeps the connection instead.
        """
        task = asyncio.current_task()
        conn = self._held.get(task)
        if conn is not None and _reusable(conn):
            return conn
        await self._give_back_connection()
        conn = await self._pool.acquire()
        self._held[task] = conn
        return conn

    async def _give_back_connection(self) -> None:
        conn = self._held.pop(asyncio.current_task(), None)
        if conn is not None:
            # A broken connection makes release fail; the pool has discarded it then.
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _commit_new(
        self,
        conn: asyncpg.Connection,
        batch: list[_Pending],
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
                outcomes, quarantine_rows = self._outcomes(batch, batch_id, [])
                if quarantine_rows:
                    await self._copy_quarantine(conn, quarantine_rows)
                await conn.execute(
                    self._q["insert_batch"],
                    batch_id,
                    self._source,
                    self._ingestor,
                    len(columns),
                    0,
                    0,
                    len(quarantine_rows),
                    *outbox,
                )
        except asyncpg.UniqueViolationError:
            return None
        return batch_id, outcomes

    async def _commit_merged(
        self,
        conn: asyncpg.Connection,
        batch: list[_Pending],
        columns: ReadingColumns,
        outbox: Sequence[object],
    ) -> tuple[int, list[IngestOutcome]]:
        """The deduplicating path (and batches that carry only quarantine rows)."""
        async with conn.transaction():
            batch_id, _ = await conn.fetchrow(self._q["begin_batch"])
            not_stored: list[asyncpg.Record] = []
            if len(columns):
                not_stored = await self._merge(conn, columns, batch_id)
            outcomes, quarantine_rows = self._outcomes(batch, batch_id, not_stored)
            if quarantine_rows:
                await self._copy_quarantine(conn, quarantine_rows)
            await conn.execute(
                self._q["insert_batch"],
                batch_id,
                self._source,
                self._ingestor,
                sum(o.stored for o in outcomes),
                sum(o.duplicates for o in outcomes),
                sum(len(o.conflicts) for o in outcomes),
                len(quarantine_rows),
                # Duplicates included: evaluating a range again changes nothing.
                *outbox,
            )
        return batch_id, outcomes

    async def _copy_quarantine(
        self, conn: asyncpg.Connection, quarantine_rows: list[tuple[object, ...]]
    ) -> None:
        await conn.copy_records_to_table(
            "ingest_quarantine",
            schema_name="rpm",
            records=quarantine_rows,
            columns=_QUARANTINE_COLUMNS,
        )

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

    def _outcomes(
        self,
        batch: list[_Pending],
        batch_id: int,
        not_stored: list[asyncpg.Record],
    ) -> tuple[list[IngestOutcome], list[tuple[object, ...]]]:
        duplicates = [0] * len(batch)
        conflicts: list[list[Conflict]] = [[] for _ in batch]
        quarantine_rows: list[tuple[object, ...]] = []
        # seq (row number in the batch) -> (request number, row number in the request)
        starts = np.cumsum([0] + [len(p.request.columns) for p in batch]).tolist()
        for record in not_stored:
            seq = record["seq"]
            request_number = bisect.bisect_right(starts, seq) - 1
            reading_number = seq - starts[request_number]
            request = batch[request_number].request
            value = float(request.columns.value[reading_number])
            if record["stored_value"] == value:
                duplicates[request_number] += 1
                continue
            conflict = Conflict(
                request.reading_indexes[reading_number], record["stored_value"], value
            )
            conflicts[request_number].append(conflict)
            quarantine_rows.append(
                self._quarantine_row(
                    request,
                    batch_id,
                    QuarantineEntry("conflict", conflict.detail, conflict.reading_index),
                )
            )
        outcomes = []
        for n, pending in enumerate(batch):
            request = pending.request
            quarantine_rows.extend(
                self._quarantine_row(request, batch_id, entry) for entry in request.quarantine
            )
            outcomes.append(
                IngestOutcome(
                    batch_id=batch_id,
                    stored=len(request.columns) - duplicates[n] - len(conflicts[n]),
                    duplicates=duplicates[n],
                    conflicts=tuple(conflicts[n]),
                    quarantined=len(request.quarantine) + len(conflicts[n]),
                )
            )
        return outcomes, quarantine_rows

    def _quarantine_row(
        self, request: IngestRequest, batch_id: int, entry: QuarantineEntry
    ) -> tuple[object, ...]:
        return (
            datetime.fromtimestamp(request.received_at, UTC),
            self._source,
            entry.reason,
            entry.detail,
            request.raw_payload,
            entry.reading_index,
            request.claimed_device,
            request.topic,
            batch_id,
        )


def reading_rows(readings: Iterable[ValidatedReading], batch_id: int) -> list[tuple[object, ...]]:
    """asyncpg ``copy_records_to_table`` records for rpm.readings, in ``READING_COLUMNS`` order.

    No longer the ingest path (that writes ``ReadingColumns.copy_stream``); kept for callers
    that hold ValidatedReading objects, such as the hot-path benchmark.
    """
    return [
        (
            r.measured_at,
            r.received_at,
            r.value,
            batch_id,
            r.device_id,
            r.patient_id,
            r.metric_id,
            r.utc_offset_minutes,
            r.client_reading_id,
        )
        for r in readings
    ]


def _reusable(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back itself when the connection was lost
        return False


def _datetime(epoch_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=epoch_us)


async def check_durability(pool: asyncpg.Pool) -> None:
    """Refuse to acknowledge anything if COMMIT would return before the WAL is flushed."""
    async with pool.acquire() as conn:
        setting = await conn.fetchval(queries("ingest_commit")["synchronous_commit"])
    if setting not in ACCEPTED_SYNCHRONOUS_COMMIT:
        raise UnsafeDatabaseSettingsError(
            f"synchronous_commit is {setting!r}: acknowledged readings could be lost in a crash; "
            f"set it to 'on' for the ingest role or database"
        )
