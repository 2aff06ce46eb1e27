"""1-minute, 1-hour and 1-day rollups of readings per patient and metric, on both editions.

Readers use ``rpm.vitals_timeline`` (migration 0004) or the relations ``rpm.readings_1m``,
``rpm.readings_1h`` and ``rpm.readings_1d``: materialized buckets below a watermark, the rest
aggregated from raw readings on the fly, so new readings show at once; a late reading for a
bucket already materialized shows after the next refresh (its invalidation is recorded).

Keeping them materialized is :func:`refresh_rollups`:

- TSL edition: the continuous aggregates' refresh policies do it in the background; a call
  aligns the policies' windows with the settings and refreshes the three aggregates now.
- Apache edition: rpmstore's own rollup tables. One call (1) advances the invalidation
  threshold in ``rpm.rollup_watermark``, waiting for in-flight ingest batches so that every
  reading below it is either visible or recorded as an invalidation; (2) materializes new
  buckets up to the threshold, a day per transaction; (3) consumes ``rpm.rollup_invalidations``
  (late and out-of-order readings), recomputing exactly the touched buckets, delete + insert
  from raw for minutes and from the finer level for hours and days, in the transaction that
  deletes the invalidations.

On both, nothing older than the raw horizon (``raw_horizon``, setting
``RPMSTORE_ROLLUP_RAW_HORIZON``; keep it shorter than raw retention) is ever recomputed from raw
readings, so dropping raw chunks never erases rollups. One refresher runs at a time (session
advisory lock); a second waits, or returns at once with ``wait=False``.

Calling it: ``rpmstore rollups refresh [--loop --interval S]`` (the command is in the
composition root); from code, with an autocommit
psycopg connection, ``refresh_rollups(conn, raw_horizon=..., lag=...)``, or from asyncio
``await asyncio.to_thread(refresh_rollups, conn, ...)`` (it blocks while it works); for a
background thread, :func:`refresh_forever`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

import psycopg
from psycopg import errors

from schema.edition import Edition, License, detect_edition
from schema.errors import is_transient, sqlstate
from schema.migrate import LOCK_CLASS
from schema.rollup_levels import EPOCH, FINER, LEVELS, ROLLUP_WIDTHS, floor_to_level
from schema.sql import queries

log = logging.getLogger(__name__)

LOCK_OBJECT = 2  # pg_advisory_lock('RPMS', 2); the migration runner holds ('RPMS', 1)
DEFAULT_RAW_HORIZON = timedelta(days=30)
DEFAULT_LAG = timedelta(minutes=1)
# TSL: a refresh policy recomputes from now() - (raw_horizon - POLICY_MARGIN), never earlier
# than the refresher's day-aligned horizon start (the first UTC midnight after
# now() - raw_horizon is at most a day later), so both editions materialize the same buckets:
# one rule, nothing before the horizon start is recomputed.
POLICY_MARGIN = timedelta(days=1)
# The policy window must still span two 1-day buckets past the lag (TimescaleDB's minimum).
MIN_WINDOW = POLICY_MARGIN + timedelta(days=2)


def _q(name: str) -> str:
    return queries("rollups")[name]


@dataclass(frozen=True)
class RefreshReport:
    """What one refresh did."""

    edition: License
    ran: bool  # False: another refresher held the lock and wait=False
    horizon_start: datetime | None = None  # nothing before it was recomputed from raw
    threshold: datetime | None = None  # buckets before it are materialized (or refreshed, TSL)
    materialized_until: datetime | None = None  # the 1-minute watermark after the refresh
    threshold_advanced: bool = False
    invalidations: int = 0  # Apache: invalidation rows consumed
    invalidations_before_horizon: int = 0  # ... of which reach before horizon_start (clipped)
    rows_written: Mapping[str, int] = field(default_factory=dict)  # Apache: per level
    policies_aligned: tuple[str, ...] = ()  # TSL: policies whose window was changed
    seconds: float = 0.0


def refresh_rollups(
    conn: psycopg.Connection,
    *,
    raw_horizon: timedelta = DEFAULT_RAW_HORIZON,
    lag: timedelta = DEFAULT_LAG,
    wait: bool = True,
    invalidation_batch: int = 10_000,
    watermark_lock_timeout: timedelta = timedelta(seconds=2),
    edition: Edition | None = None,
) -> RefreshReport:
    """Bring the rollups up to ``now() - lag``, never recomputing before the raw horizon.

    ``conn`` must be in autocommit mode: the refresh runs several transactions of its own (and
    TimescaleDB's refresh procedure refuses to run inside one).
    """
    if not conn.autocommit:
        raise ValueError("refresh_rollups needs an autocommit connection (it runs transactions)")
    if lag < timedelta(0) or raw_horizon - lag < MIN_WINDOW:
        raise ValueError(
            f"the raw horizon must exceed the lag by at least {MIN_WINDOW.days} days "
            f"(got raw_horizon={raw_horizon}, lag={lag})"
        )
    edition = edition or detect_edition(conn)
    started = time.monotonic()
    with _refresher_lock(conn, wait=wait) as locked:
        if not locked:
            log.info("rollup refresh skipped: another refresher is running")
            return RefreshReport(edition=edition.license, ran=False)
        row = conn.execute(_q("window"), {"lag": lag, "raw_horizon": raw_horizon}).fetchone()
        assert row is not None
        threshold, horizon_start = row
        if edition.continuous_aggregates:
            report = _refresh_continuous_aggregates(
                conn, threshold, horizon_start, raw_horizon=raw_horizon, lag=lag
            )
        else:
            report = _refresh_tables(
                conn,
                threshold,
                horizon_start,
                invalidation_batch=invalidation_batch,
                watermark_lock_timeout=watermark_lock_timeout,
            )
    elapsed = round(time.monotonic() - started, 3)
    report = replace(report, seconds=elapsed)
    log.info(
        "rollups refreshed",
        extra={
            "edition": report.edition,
            "threshold": report.threshold.isoformat() if report.threshold else None,
            "threshold_advanced": report.threshold_advanced,
            "invalidations": report.invalidations,
            "rows_written": dict(report.rows_written),
            "policies_aligned": list(report.policies_aligned),
            "seconds": elapsed,
        },
    )
    if report.invalidations_before_horizon:
        # Late readings older than the horizon are stored but will never reach the rollups.
        log.warning(
            "late readings before the rollup horizon were not rolled up",
            extra={
                "invalidations": report.invalidations_before_horizon,
                "horizon_start": horizon_start.isoformat(),
            },
        )
    return report


@contextmanager
def _refresher_lock(conn: psycopg.Connection, *, wait: bool) -> Iterator[bool]:
    key = {"lock_class": LOCK_CLASS, "lock_object": LOCK_OBJECT}
    if wait:
        conn.execute(_q("lock"), key)
        locked = True
    else:
        row = conn.execute(_q("try_lock"), key).fetchone()
        locked = bool(row and row[0])
    try:
        yield locked
    finally:
        # A broken connection has released the lock with its session.
        if locked and not conn.closed and not conn.broken:
            conn.execute(_q("unlock"), key)


def _align_policies(
    conn: psycopg.Connection, *, raw_horizon: timedelta, lag: timedelta
) -> tuple[str, ...]:
    """Give every refresh policy the settings' window; returns the aggregates changed."""
    start_offset = raw_horizon - POLICY_MARGIN
    misaligned = conn.execute(
        _q("misaligned_policies"), {"start_offset": start_offset, "lag": lag}
    ).fetchall()
    for view, schedule_interval in misaligned:
        # Replaced, not altered (see remove_refresh_policy); one transaction, so the
        # aggregate is never left without its policy.
        with conn.transaction():
            conn.execute(_q("remove_refresh_policy"), {"view": view})
            conn.execute(
                _q("add_refresh_policy"),
                {
                    "view": view,
                    "start_offset": start_offset,
                    "end_offset": lag,
                    "schedule_interval": schedule_interval,
                },
            )
    return tuple(str(view) for view, _ in misaligned)


def _refresh_continuous_aggregates(
    conn: psycopg.Connection,
    threshold: datetime,
    horizon_start: datetime,
    *,
    raw_horizon: timedelta,
    lag: timedelta,
) -> RefreshReport:
    aligned = _align_policies(conn, raw_horizon=raw_horizon, lag=lag)
    if aligned:
        log.info(
            "rollup refresh policies aligned with the settings",
            extra={
                "views": list(aligned),
                "start_offset": str(raw_horizon - POLICY_MARGIN),
                "end_offset": str(lag),
            },
        )
    window = {"start": horizon_start, "end": threshold}
    # Finest first: each continuous aggregate is refreshed from the one below it.
    for level in LEVELS:
        conn.execute(_q(f"refresh_cagg_{level}"), window)
    row = conn.execute(_q("cagg_watermark")).fetchone()
    return RefreshReport(
        edition="timescale",
        ran=True,
        horizon_start=horizon_start,
        threshold=threshold,
        materialized_until=row[0] if row else None,
        policies_aligned=aligned,
    )


def _refresh_tables(
    conn: psycopg.Connection,
    threshold: datetime,
    horizon_start: datetime,
    *,
    invalidation_batch: int,
    watermark_lock_timeout: timedelta,
) -> RefreshReport:
    advanced = _advance_threshold(conn, threshold, watermark_lock_timeout)
    row = conn.execute(_q("threshold")).fetchone()
    target: datetime | None = row[0] if row else None
    written: Counter[str] = Counter()
    if target is not None:
        _materialize(conn, target, horizon_start, written)
    consumed, before_horizon = _consume_invalidations(
        conn, horizon_start, invalidation_batch, written
    )
    progress = conn.execute(_q("progress")).fetchone()
    return RefreshReport(
        edition="apache",
        ran=True,
        horizon_start=horizon_start,
        threshold=target,
        materialized_until=progress[0] if progress else None,
        threshold_advanced=advanced,
        invalidations=consumed,
        invalidations_before_horizon=before_horizon,
        rows_written=MappingProxyType(dict(written)),
    )


def _advance_threshold(conn: psycopg.Connection, threshold: datetime, timeout: timedelta) -> bool:
    row = conn.execute(_q("threshold")).fetchone()
    current = row[0] if row else None
    if current is not None and current >= threshold:
        return False
    try:
        with conn.transaction():
            # The exclusive lock queues ingest batches behind it; bounded so that a long
            # transaction holding the watermark cannot stall ingest: we try again next time.
            conn.execute(
                _q("set_lock_timeout"), {"timeout": f"{int(timeout.total_seconds() * 1000)}ms"}
            )
            conn.execute(_q("lock_watermark"))
            conn.execute(_q("advance_threshold"), {"threshold": threshold})
    except errors.LockNotAvailable:
        log.warning(
            "rollup threshold not advanced: a transaction kept the watermark locked",
            extra={"timeout_s": timeout.total_seconds()},
        )
        return False
    return True


def _materialize(
    conn: psycopg.Connection, target: datetime, horizon_start: datetime, written: Counter[str]
) -> None:
    """New buckets up to ``target``, one UTC day per transaction (bounded transactions)."""
    while True:
        row = conn.execute(_q("progress")).fetchone()
        progress: datetime | None = row[0] if row else None
        start = horizon_start if progress is None else max(progress, horizon_start)
        if start >= target:
            return
        day = ROLLUP_WIDTHS["1d"]
        until = min(target, EPOCH + ((start - EPOCH) // day + 1) * day)
        params = {
            "until": until,
            "from_1m": start,
            # A coarser bucket starts at the bucket of the progress mark (it was incomplete
            # then), never before the horizon.
            "from_1h": start
            if progress is None
            else max(floor_to_level(progress, "1h"), horizon_start),
            "from_1d": start
            if progress is None
            else max(floor_to_level(progress, "1d"), horizon_start),
        }
        with conn.transaction():
            for level in LEVELS:
                written[level] += conn.execute(_q(f"materialize_{level}"), params).rowcount
            conn.execute(_q("set_progress"), {"until": until})


def _consume_invalidations(
    conn: psycopg.Connection, horizon_start: datetime, batch: int, written: Counter[str]
) -> tuple[int, int]:
    conn.execute(_q("create_dirty"))
    consumed = before_horizon = 0
    while True:
        with conn.transaction():
            row = conn.execute(
                _q("consume_invalidations"), {"limit": batch, "horizon_start": horizon_start}
            ).fetchone()
            assert row is not None
            count, early = int(row[0]), int(row[1])
            if count:
                for level in LEVELS:
                    conn.execute(
                        _q("mark_dirty"),
                        {
                            "resolution": level,
                            "finer": FINER[level],
                            "width": ROLLUP_WIDTHS[level],
                            "horizon_start": horizon_start,
                        },
                    )
                conn.execute(_q("analyze_dirty"))
                for level in LEVELS:
                    conn.execute(_q(f"clear_{level}"))
                    written[level] += conn.execute(_q(f"recompute_{level}")).rowcount
        consumed += count
        before_horizon += early
        if count < batch:
            return consumed, before_horizon


def refresh_forever(
    connect: Callable[[], psycopg.Connection],
    *,
    interval: timedelta,
    stop: threading.Event,
    raw_horizon: timedelta = DEFAULT_RAW_HORIZON,
    lag: timedelta = DEFAULT_LAG,
    on_report: Callable[[RefreshReport], None] | None = None,
) -> None:
    """Refresh every ``interval`` until ``stop`` is set; reconnects after connection errors.

    ``connect`` returns a new autocommit connection. Meant for a thread of a long-running
    process, or the CLI's ``--loop``.
    """
    conn: psycopg.Connection | None = None
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect()
                report = refresh_rollups(conn, raw_horizon=raw_horizon, lag=lag)
                if on_report is not None:
                    on_report(report)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The database went away or restarted, or the round lost a lock or deadlock:
                # the next round reconnects and tries again.
                log.warning(
                    "rollup refresh failed, retrying",
                    extra={"error": str(exc), "sqlstate": sqlstate(exc)},
                )
                if conn is not None:
                    conn.close()
                conn = None
            stop.wait(interval.total_seconds())
    finally:
        if conn is not None:
            conn.close()
