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

This module gathers the batches and answers their callers. What a failed batch does next is
``ingest.retrying``; the transaction itself ``ingest.batch_writer``; what became of each
request ``ingest.outcomes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from ingest.batch_writer import READING_COLUMNS, BatchWriter
from ingest.metrics import IngestMetrics
from ingest.outcomes import Conflict, IngestOutcome
from ingest.requests import IngestRequest, QuarantineEntry
from ingest.retrying import RetryingWriter
from ingest.store import Source
from schema.sql import queries

# Also the request and outcome types, which callers (ingest.service, the tests, the
# benchmarks) import from here, where they were defined before the committer was split.
__all__ = [
    "ACCEPTED_SYNCHRONOUS_COMMIT",
    "READING_COLUMNS",
    "BufferFullError",
    "Conflict",
    "DatabaseUnavailableError",
    "GroupCommitter",
    "IngestOutcome",
    "IngestRequest",
    "PostCommitHook",
    "QuarantineEntry",
    "UnsafeDatabaseSettingsError",
    "check_durability",
]

log = logging.getLogger(__name__)

ACCEPTED_SYNCHRONOUS_COMMIT = ("on", "remote_apply")
# Optional post-commit hook (the in-process alert worker): called after each committed batch's
# callers were answered, to say the alert outbox has work. It must return at once, never raise.
PostCommitHook = Callable[[], None]


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached right now; nothing was stored or acknowledged."""


class BufferFullError(RuntimeError):
    """The committer holds as many rows as it may; try again later (HTTP 503, MQTT no ack)."""


class UnsafeDatabaseSettingsError(RuntimeError):
    """The database would acknowledge commits that a crash could still lose."""


@dataclass
class _Pending:
    request: IngestRequest
    future: asyncio.Future[IngestOutcome]
    # What this request adds to the buffer and, once done, takes off it: one number, worked
    # out once, so the bound cannot drift. Quarantined readings count too: they are held and
    # written like the others (a payload of 1,000 bad readings is no lighter than 1,000 good).
    rows: int = field(init=False)
    # Taken into a batch by a worker: from then on its transaction decides its fate.
    taken: bool = False
    # Its caller stopped waiting before it was taken: it is never written.
    withdrawn: bool = False

    def __post_init__(self) -> None:
        self.rows = len(self.request.columns) + len(self.request.quarantine)

    @property
    def weight(self) -> int:
        """Its share of a batch: at least 1, so that a batch always makes progress."""
        return max(1, self.rows)


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
        self._post_commit = post_commit
        self._source = source
        self._max_batch_rows = max_batch_rows
        self._max_delay_s = max_delay_s
        self._max_pending_rows = max_pending_rows
        self._worker_count = workers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._pending_rows = 0
        self._workers: list[asyncio.Task[None]] = []
        self._metrics = metrics
        self._writer = RetryingWriter(
            pool,
            BatchWriter(source=source, alert_outbox=alert_outbox),
            max_backoff_s=max_backoff_s,
            metrics=metrics,
        )
        self._committing = 0  # batches being committed right now
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
        """Queue ``request`` and return once its batch has committed.

        A caller that stops waiting (a timeout, a cancelled task) before a worker took the
        request withdraws it: it is never written, so the caller may truthfully say "not kept".
        Once taken, the request's transaction decides: the cancelled caller still waits for
        its outcome (the commit's, or a refusal if the batch fails before committing), so an
        answer never says "not kept" about something that was kept.
        """
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        rows = pending.rows
        # A request bigger than the whole buffer is still admitted into an empty buffer, or it
        # could never be stored.
        if self._pending_rows and self._pending_rows + rows > self._max_pending_rows:
            if self._metrics:
                self._metrics.buffer_full.labels(self._source).inc()
            raise BufferFullError(
                f"{self._pending_rows} readings are waiting to be committed "
                f"(limit {self._max_pending_rows})"
            )
        self._pending_rows += rows
        if self._metrics:
            self._metrics.buffer_rows.set(self._pending_rows)
        await self._queue.put(pending)
        try:
            # Shielded: cancelling the caller must not cancel the outcome of a taken request.
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            # Either way the caller has given up: a batch that fails is not retried for it.
            pending.withdrawn = True
            if pending.future.done() or pending.taken:
                # Committing (or committed) already: wait for what the database decided.
                return await pending.future
            raise

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
        rows = batch[0].weight
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
            rows += item.weight
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
            await self._writer.release()

    async def _work_batches(self) -> None:
        while True:
            batch = await self._next_batch()
            self._committing += 1
            try:
                # Withdrawn requests are left out: their callers were told "not kept".
                kept = [p for p in batch if not p.withdrawn]
                for pending in kept:
                    pending.taken = True
                outcomes = await self._writer.commit(
                    [p.request for p in kept], abandoned=_abandoned_in(kept)
                )
                for pending, outcome in zip(kept, outcomes, strict=True):
                    if pending.future.done():
                        continue
                    if outcome is None:
                        pending.future.set_exception(
                            DatabaseUnavailableError(
                                "not stored: the database failed before this was committed"
                            )
                        )
                        continue
                    if self._metrics:
                        count_outcome(self._metrics, self._source, pending.request, outcome)
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


def _abandoned_in(batch: list[_Pending]) -> Callable[[IngestRequest], bool]:
    """Whether a request of ``batch`` was given up by its caller."""
    by_request = {id(p.request): p for p in batch}
    return lambda request: by_request[id(request)].withdrawn


def count_outcome(
    metrics: IngestMetrics, source: Source, request: IngestRequest, outcome: IngestOutcome
) -> None:
    """Count what became of every reading of a committed request.

    Counted here, where the outcome is known, rather than by the caller, which may have
    stopped waiting: so /metrics matches what the database holds.
    """
    label = request.source or source
    readings = metrics.readings
    readings.labels(label, "stored", "").inc(outcome.stored)
    readings.labels(label, "duplicate", "").inc(outcome.duplicates)
    # A rejected reading already quarantined (a retried payload) is a duplicate too, with its
    # reason: counting it as quarantined again would count rows the database does not have.
    repeats = Counter(outcome.already_quarantined)
    conflicts = (QuarantineEntry("conflict", c.detail, c.reading_index) for c in outcome.conflicts)
    for entry in (*conflicts, *request.quarantine, *outcome.refused):
        if repeats[entry]:
            repeats[entry] -= 1
            readings.labels(label, "duplicate", entry.reason).inc()
        else:
            readings.labels(label, "quarantined", entry.reason).inc()


async def check_durability(pool: asyncpg.Pool) -> None:
    """Refuse to acknowledge anything if COMMIT would return before the WAL is flushed."""
    async with pool.acquire() as conn:
        setting = await conn.fetchval(queries("ingest_commit")["synchronous_commit"])
    if setting not in ACCEPTED_SYNCHRONOUS_COMMIT:
        raise UnsafeDatabaseSettingsError(
            f"synchronous_commit is {setting!r}: acknowledged readings could be lost in a crash; "
            f"set it to 'on' for the ingest role or database"
        )
