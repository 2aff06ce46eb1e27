"""Alert evaluation after ingest commits, off the acknowledgement path.

The group committer calls :meth:`AlertWorker.on_commit` once a batch has committed and its
callers have been answered; that only appends to a list and wakes the worker task, so alerting
can never fail or delay an ingest acknowledgement. The worker evaluates everything queued since
its last evaluation in one transaction (under load, many batches coalesce into one evaluation).

Failures do not lose evaluations:
- the database is unreachable or busy: the same ranges are retried with backoff (ranges that
  arrive meanwhile are merged in);
- evaluation keeps failing for another reason (``max_attempts``), or the process stops with
  ranges not yet evaluated: the ranges are parked in ``rpm.alert_pending_evaluations`` and the
  sweep evaluates them.
What remains: a process killed (SIGKILL, power loss) between an ingest COMMIT and the end of
its evaluation loses that evaluation, a window of milliseconds; the next reading of the same
series evaluates its neighbourhood again, and missing-data alerts are swept from the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ingest.alerting.evaluator import (
    AlertEvaluator,
    TouchedRange,
    merge_ranges,
    range_arrays,
    touched_ranges,
)
from ingest.alerting.metrics import AlertMetrics
from ingest.alerting.sweep import sweep_missing_data
from ingest.store import ReadingColumns, ValidatedReading
from schema.sql import queries

log = logging.getLogger(__name__)

# Not about the data: wait and retry the same ranges.
_TRANSIENT_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.TooManyConnectionsError,
)


@dataclass(frozen=True)
class AlertingOptions:
    """Alert evaluation in an ingesting process."""

    enabled: bool = True  # evaluate rules after every committed batch
    # Run the missing-data sweep (and parked evaluations) every this many seconds; None: not
    # in this process (``rpmstore alerts sweep --loop`` or another process does it).
    sweep_interval_s: float | None = None


class AlertWorker:
    """Evaluates alert rules for committed batches in the background; sweeps periodically."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        evaluator: AlertEvaluator | None = None,
        sweep_interval_s: float | None = None,
        max_attempts: int = 5,
        max_backoff_s: float = 5.0,
        metrics: AlertMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._evaluator = evaluator or AlertEvaluator()
        self._sweep_interval_s = sweep_interval_s
        self._max_attempts = max_attempts
        self._max_backoff_s = max_backoff_s
        self._queued: list[ReadingColumns | Sequence[ValidatedReading]] = []
        self._in_flight: list[TouchedRange] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.evaluations = 0  # completed evaluation transactions (for tests and benchmarks)

    def on_commit(self, batches: Sequence[ReadingColumns | Sequence[ValidatedReading]]) -> None:
        """The group committer's post-commit hook: queue and return at once; never raises."""
        try:
            self._queued.extend(batches)
            if self._metrics:
                self._metrics.queued_batches.set(len(self._queued))
            self._idle.clear()
            self._wake.set()
        except Exception:  # a hook must not break the committer that calls it
            log.exception("could not queue alert evaluation")

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._evaluate_forever(), name="alert-evaluator")]
        if self._sweep_interval_s is not None:
            self._tasks.append(
                asyncio.create_task(self._sweep_forever(self._sweep_interval_s), name="alert-sweep")
            )

    async def drain(self) -> None:
        """Wait until everything queued so far has been evaluated (or parked)."""
        await self._idle.wait()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Evaluate what is queued (at most ``grace_s``), park the rest, stop the tasks."""
        try:
            await asyncio.wait_for(self.drain(), grace_s)
        except TimeoutError:
            log.warning("stopping with alert evaluations outstanding; parking them")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        leftover = merge_ranges([*self._in_flight, *touched_ranges(self._take_queued())])
        self._in_flight = []
        if leftover:
            try:
                await self._park(leftover, "stopped before evaluation")
            except Exception:
                log.exception(
                    "alert evaluations lost: could not park them",
                    extra={"series": len(leftover)},
                )
        self._idle.set()

    def _take_queued(self) -> list[ReadingColumns | Sequence[ValidatedReading]]:
        queued, self._queued = self._queued, []
        if self._metrics:
            self._metrics.queued_batches.set(0)
        return queued

    async def _evaluate_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            queued = self._take_queued()
            if queued or self._in_flight:
                self._in_flight = merge_ranges([*self._in_flight, *touched_ranges(queued)])
                await self._evaluate_with_retry()
            if not self._queued:
                self._idle.set()

    async def _evaluate_with_retry(self) -> None:
        backoff = 0.05
        attempts = 0
        while self._in_flight:
            started = time.monotonic()
            try:
                async with self._pool.acquire() as conn:
                    result = await self._evaluator.evaluate(conn, self._in_flight)
                self.evaluations += 1
                if self._metrics:
                    self._metrics.evaluation_seconds.observe(time.monotonic() - started)
                    self._metrics.alerts.labels("opened").inc(len(result.opened))
                    self._metrics.alerts.labels("extended").inc(result.extended)
                    self._metrics.alerts.labels("resolved").inc(result.resolved)
                log.debug(
                    "alerts evaluated",
                    extra={
                        "series": len(self._in_flight),
                        "ms": round((time.monotonic() - started) * 1000, 1),
                    },
                )
                self._in_flight = []
                return
            except _TRANSIENT_ERRORS as exc:
                if self._metrics:
                    self._metrics.failures.labels("transient").inc()
                log.warning("alert evaluation failed, retrying in %.2fs: %s", backoff, exc)
            except Exception as exc:
                attempts += 1
                if self._metrics:
                    self._metrics.failures.labels("error").inc()
                if attempts >= self._max_attempts:
                    log.exception("alert evaluation keeps failing; parking it for the sweep")
                    try:
                        await self._park(self._in_flight, f"{type(exc).__name__}: {exc}")
                        self._in_flight = []
                        return
                    except Exception:
                        log.exception("could not park alert evaluation; will retry")
                else:
                    log.warning("alert evaluation failed (attempt %d): %s", attempts, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
            # Ranges queued while waiting are evaluated with these.
            self._in_flight = merge_ranges([*self._in_flight, *touched_ranges(self._take_queued())])

    async def _park(self, touched: Sequence[TouchedRange], error: str) -> None:
        patients, metrics, starts, ends = range_arrays(touched)
        async with self._pool.acquire() as conn:
            await conn.execute(
                queries("alerting")["park_evaluation"],
                patients,
                metrics,
                starts,
                ends,
                [error] * len(touched),
            )
        if self._metrics:
            self._metrics.parked.inc(len(touched))
        log.warning("alert evaluation parked", extra={"series": len(touched), "error": error})

    async def _sweep_forever(self, interval_s: float) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await sweep_missing_data(conn, datetime.now(UTC), evaluator=self._evaluator)
            except Exception:  # the next sweep tries again; never stop sweeping
                log.exception("alert sweep failed")
            await asyncio.sleep(interval_s)
