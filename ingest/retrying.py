"""What a batch whose transaction failed does next, and the connection each worker uses.

One policy, ``schema.errors``, says what a failure was; here it decides: the batch is retried
whole with backoff while the failure says nothing about the data (if its COMMIT had in fact
landed, the retry sees duplicates, so nothing is written twice); a request the database
refuses is isolated and its readings quarantined; a defect in this process fails the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import asyncpg

from ingest.batch_writer import BatchWriter
from ingest.metrics import IngestMetrics
from ingest.outcomes import IngestOutcome
from ingest.requests import IngestRequest, QuarantineEntry
from schema.errors import ErrorKind, classify, sqlstate

log = logging.getLogger(__name__)


class RetryingWriter:
    """Commits a batch through a :class:`BatchWriter` until it is durable, on the calling
    worker task's own connection."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        writer: BatchWriter,
        *,
        max_backoff_s: float,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self._writer = writer
        self._connections = _PinnedConnections(pool)
        self._max_backoff_s = max_backoff_s
        self._metrics = metrics

    async def release(self) -> None:
        """Give the calling worker task's connection back to the pool (when it stops)."""
        await self._connections.give_back()

    async def commit(
        self,
        requests: Sequence[IngestRequest],
        *,
        abandoned: Callable[[IngestRequest], bool] = lambda _: False,
    ) -> list[IngestOutcome | None]:
        """Each request's outcome, once the batch is durable (or the request quarantined).

        None for a request ``abandoned`` (its caller gave up) when an attempt failed: it is
        left out of every later attempt, so that it is certainly not written after its
        caller was told so.
        """
        backoff = 0.05
        outcomes: dict[int, IngestOutcome | None] = {}
        remaining = list(requests)
        while True:
            try:
                if remaining:
                    for request, outcome in zip(
                        remaining, await self._commit(remaining), strict=True
                    ):
                        outcomes[id(request)] = outcome
                return [outcomes[id(r)] for r in requests]
            except Exception as exc:
                kind = classify(exc)
                if kind is ErrorKind.DATA:
                    # Validation should have caught this. Isolate the request the database
                    # refused so the rest of the batch is stored and the refused readings are
                    # quarantined: never retried forever (a poison message), never dropped.
                    isolated = await self._isolate(remaining, exc)
                    outcomes.update(zip(map(id, remaining), isolated, strict=True))
                    return [outcomes[id(r)] for r in requests]
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
                        "requests": len(requests),
                        "rows": sum(len(r.columns) for r in requests),
                    },
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                for request in [r for r in remaining if abandoned(r)]:
                    outcomes[id(request)] = None
                    remaining.remove(request)

    async def _isolate(
        self, requests: Sequence[IngestRequest], error: Exception
    ) -> list[IngestOutcome]:
        if len(requests) > 1:
            return [await self._commit_one(request) for request in requests]
        (request,) = requests
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
        outcome = await self._commit_one(fallback)
        return [replace(outcome, refused=refused)]

    async def _commit_one(self, request: IngestRequest) -> IngestOutcome:
        (outcome,) = await self.commit([request])
        assert outcome is not None  # nothing is abandoned here
        return outcome

    async def _commit(self, requests: Sequence[IngestRequest]) -> list[IngestOutcome]:
        started = time.monotonic()
        try:
            conn = await self._connections.get()
            outcomes = await self._writer.write(conn, requests)
        except BaseException:
            # The session's state is unknown after an error: give the connection back (the
            # pool resets it, or discards it if it is broken) and take a fresh one next time.
            await self._connections.give_back()
            raise
        elapsed = time.monotonic() - started
        rows = sum(len(request.columns) for request in requests)
        if self._metrics:
            self._metrics.batch_rows.observe(rows)
            self._metrics.commit_seconds.observe(elapsed)
        log.debug(
            "ingest batch committed",
            extra={
                "batch_id": outcomes[0].batch_id,
                "requests": len(requests),
                "rows": rows,
                "ms": round(elapsed * 1000, 1),
            },
        )
        return outcomes


class _PinnedConnections:
    """Each worker task's own connection, kept from batch to batch.

    Returning a connection to the pool after every batch costs a round trip (the pool resets
    the session: RESET ALL, UNLISTEN, ...) that every caller of the batch would wait for; a
    batch leaves no session state behind (its transaction is over), so the worker keeps the
    connection instead.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._held: dict[asyncio.Task[None] | None, asyncpg.Connection] = {}

    async def get(self) -> asyncpg.Connection:
        """The calling task's connection: the one it holds if still usable, else a new one."""
        task = asyncio.current_task()
        conn = self._held.get(task)
        if conn is not None and _reusable(conn):
            return conn
        await self.give_back()
        conn = await self._pool.acquire()
        self._held[task] = conn
        return conn

    async def give_back(self) -> None:
        """Return the calling task's connection (if it holds one) to the pool."""
        conn = self._held.pop(asyncio.current_task(), None)
        if conn is not None:
            # A broken connection makes release fail; the pool has discarded it then.
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


def _reusable(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back itself when the connection was lost
        return False
