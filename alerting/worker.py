"""Alert evaluation after ingest commits, off the acknowledgement path, from the outbox.

Every ingest batch writes the series it touched to ``rpm.alert_outbox`` in its own transaction
(``ingest.batch_writer``). The worker claims outbox batches, evaluates them and deletes them in
one transaction (``alerting.outbox``): an evaluation is never lost, whatever stops when.
A process SIGKILLed after an ingest COMMIT leaves the batch in the outbox, and the next worker
to look (a restarted process, another ingestor, ``rpmstore alerts run`` or the sweep)
evaluates it.

In an ingesting process the group committer calls :meth:`AlertWorker.on_commit` after each
batch (after its callers were answered): that only wakes the worker, so alerting can never
fail or delay an acknowledgement. Between wake-ups the worker polls, for batches committed by
processes without a worker of their own. Under load many batches share one evaluation.

Failures: the database unreachable or busy, the same batches are retried with backoff
(they stay in the outbox meanwhile); evaluation failing for another reason ``max_attempts``
times, the claimed batches are parked in ``rpm.alert_pending_evaluations`` with the error,
so that they stop holding up the ones behind them, and the sweep retries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from alerting.evaluator import AlertEvaluator
from alerting.metrics import AlertMetrics
from alerting.outbox import OutboxPass, evaluate_outbox_once, park_outbox
from alerting.sweep import sweep_missing_data
from schema.errors import is_transient
from schema.sql import queries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertingOptions:
    """Alert evaluation in an ingesting process."""

    # Evaluate the outbox in this process (woken after every committed batch). False: the
    # batches only write the outbox, for `rpmstore alerts run` (or another process) to evaluate.
    enabled: bool = True
    # Run the missing-data sweep (and parked evaluations) every this many seconds; None: not
    # in this process (``rpmstore alerts sweep --loop`` or another process does it).
    sweep_interval_s: float | None = None


class AlertWorker:
    """Evaluates the alert outbox in the background; sweeps periodically."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        evaluator: AlertEvaluator | None = None,
        sweep_interval_s: float | None = None,
        poll_interval_s: float = 1.0,
        gather_s: float = 0.25,
        max_attempts: int = 5,
        max_backoff_s: float = 5.0,
        metrics: AlertMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._evaluator = evaluator or AlertEvaluator()
        self._sweep_interval_s = sweep_interval_s
        self._poll_interval_s = poll_interval_s
        self._gather_s = gather_s
        self._max_attempts = max_attempts
        self._max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._conn: asyncpg.Connection | None = None
        self.evaluations = 0  # completed evaluation transactions (for tests and benchmarks)

    def on_commit(self) -> None:
        """The group committer's post-commit hook: wake the worker; returns at once."""
        self._idle.clear()
        self._wake.set()

    async def start(self) -> None:
        # Batches left by a process that stopped (or died) are evaluated first.
        self.on_commit()
        self._tasks = [asyncio.create_task(self._evaluate_forever(), name="alert-evaluator")]
        if self._sweep_interval_s is not None:
            self._tasks.append(
                asyncio.create_task(self._sweep_forever(self._sweep_interval_s), name="alert-sweep")
            )

    async def drain(self) -> None:
        """Wait until the outbox has been found empty after the last commit seen."""
        await self._idle.wait()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Evaluate what is in the outbox (at most ``grace_s``), then stop. What is left stays
        in the outbox for the next worker: nothing needs parking."""
        try:
            await asyncio.wait_for(self.drain(), grace_s)
        except TimeoutError:
            log.warning("stopping with alert evaluations outstanding; they stay in the outbox")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._release()

    async def _evaluate_forever(self) -> None:
        checked = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            self._wake.clear()
            if self._metrics and time.monotonic() - checked >= self._poll_interval_s:
                checked = time.monotonic()
                await self._observe_backlog(self._metrics)
            if await self._evaluate_outbox() and self._wake.is_set() and self._gather_s:
                # Busy (batches committed while this evaluation ran): let more gather, so that
                # one evaluation (seven statements) covers many batches instead of one each.
                # Otherwise the next batch is evaluated as soon as it commits.
                await asyncio.sleep(self._gather_s)
            if not self._wake.is_set():
                self._idle.set()

    async def _observe_backlog(self, metrics: AlertMetrics) -> None:
        try:
            conn = await self._connection()
            batches, oldest_s = await conn.fetchrow(queries("alerting")["outbox_backlog"])
        except Exception as exc:  # only a gauge: evaluation reports real failures
            await self._release()
            log.debug("could not read the alert outbox backlog: %s", exc)
            return
        metrics.outbox_batches.set(batches)
        metrics.outbox_age_seconds.set(oldest_s)

    async def _evaluate_outbox(self) -> bool:
        """Evaluate outbox batches until none is left, retrying failures; whether there were
        any."""
        backoff = 0.05
        attempts = 0
        evaluated = False
        while True:
            claimed: list[int] = []
            started = time.monotonic()
            try:
                conn = await self._connection()
                done = await evaluate_outbox_once(conn, self._evaluator, claimed=claimed)
                if done is None:
                    return evaluated
                evaluated = True
                self._record(done, time.monotonic() - started)
                backoff, attempts = 0.05, 0
                continue
            except Exception as exc:
                await self._release()
                if is_transient(exc):
                    # Not about these batches: wait and retry, however long it lasts (they stay
                    # in the outbox meanwhile), without counting towards parking them.
                    if self._metrics:
                        self._metrics.failures.labels("transient").inc()
                    log.warning("alert evaluation failed, retrying in %.2fs: %s", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff_s)
                    continue
                attempts += 1
                if self._metrics:
                    self._metrics.failures.labels("error").inc()
                if attempts >= self._max_attempts and claimed:
                    log.exception("alert evaluation keeps failing; parking it for the sweep")
                    with contextlib.suppress(Exception):  # if not, the next attempt retries
                        await self._park(claimed, f"{type(exc).__name__}: {exc}")
                        attempts = 0
                        continue
                log.warning("alert evaluation failed (attempt %d): %s", attempts, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    def _record(self, done: OutboxPass, seconds: float) -> None:
        self.evaluations += 1
        if self._metrics:
            self._metrics.evaluation_seconds.observe(seconds)
            self._metrics.alerts.labels("opened").inc(len(done.result.opened))
            self._metrics.alerts.labels("extended").inc(done.result.extended)
            self._metrics.alerts.labels("resolved").inc(done.result.resolved)
        log.debug(
            "alerts evaluated",
            extra={
                "batches": len(done.batch_ids),
                "series": done.series,
                "ms": round(seconds * 1000, 1),
            },
        )

    async def _connection(self) -> asyncpg.Connection:
        """The worker's own connection, kept between evaluations: giving it back to the pool
        after each would cost a session reset (several statements) per evaluation."""
        if self._conn is None or self._conn.is_closed():
            await self._release()
            self._conn = await self._pool.acquire()
        return self._conn

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A broken connection makes release fail; the pool has discarded it then.
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _park(self, batch_ids: list[int], error: str) -> None:
        async with self._pool.acquire() as conn:
            await park_outbox(conn, batch_ids, error)
        if self._metrics:
            self._metrics.parked.inc(len(batch_ids))
        log.warning("alert evaluation parked", extra={"batches": len(batch_ids), "error": error})

    async def _sweep_forever(self, interval_s: float) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await sweep_missing_data(conn, datetime.now(UTC), evaluator=self._evaluator)
            except Exception:  # the next sweep tries again; never stop sweeping
                log.exception("alert sweep failed")
            await asyncio.sleep(interval_s)
