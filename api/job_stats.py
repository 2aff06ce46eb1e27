"""TimescaleDB's background jobs in /metrics: runs, failures and time since the last success.

On PostgreSQL 17.12 every TimescaleDB job (its own included) is counted failed after it
committed its work and backed off, so refresh policies run far less often than configured.
Reads stay correct when policies lag (the rollups aggregate their unmaterialized tail on the
fly), but ops must see it: these series make the lag alertable.

The job catalogue is read at most every ``max_age_s`` when /metrics is scraped, on the owner
pool with a statement timeout, so a scrape storm cannot load the database; the collector then
serves the last snapshot (the series of a removed job disappear with it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from schema.sql import queries

log = logging.getLogger(__name__)

_Q = queries("jobs")
_LABELS = ("job_id", "proc_name", "relation")


@dataclass(frozen=True)
class JobStat:
    job_id: int
    proc_name: str
    relation: str
    total_runs: int
    total_failures: int
    last_run_failed: bool
    seconds_since_success: float | None


class TimescaleJobStats(Collector):
    """A Prometheus collector over the last snapshot of the job catalogue."""

    def __init__(self, *, max_age_s: float = 15.0) -> None:
        self._max_age_s = max_age_s
        self._taken_at: float | None = None
        self._snapshot: tuple[JobStat, ...] = ()

    async def refresh(self, pool: AsyncConnectionPool) -> None:
        """Re-read the catalogue if the snapshot is older than ``max_age_s``."""
        now = time.monotonic()
        if self._taken_at is not None and now - self._taken_at < self._max_age_s:
            return
        self._taken_at = now  # also on failure: a broken database is not hammered per scrape
        try:
            async with pool.connection(timeout=2) as conn, conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = '2s'")
                cursor = await conn.execute(_Q["job_stats"])
                rows = await cursor.fetchall()
        except (psycopg.Error, TimeoutError) as exc:
            # /metrics must answer while the database is away; the stale series are dropped
            # so nothing reports an old success as current.
            log.warning("job statistics unavailable", extra={"error": type(exc).__name__})
            self._snapshot = ()
            return
        self._snapshot = tuple(JobStat(*row) for row in rows)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily(
            "rpmstore_timescaledb_job_runs",
            "Runs of a TimescaleDB background job since its statistics began.",
            labels=_LABELS,
        )
        failures = GaugeMetricFamily(
            "rpmstore_timescaledb_job_failures",
            "Failed runs of a TimescaleDB background job since its statistics began.",
            labels=_LABELS,
        )
        last_failed = GaugeMetricFamily(
            "rpmstore_timescaledb_job_last_run_failed",
            "1 when the job's most recent run failed.",
            labels=_LABELS,
        )
        since_success = GaugeMetricFamily(
            "rpmstore_timescaledb_job_seconds_since_success",
            "Seconds since the job last finished successfully (absent until it has).",
            labels=_LABELS,
        )
        for stat in self._snapshot:
            labels = [str(stat.job_id), stat.proc_name, stat.relation]
            runs.add_metric(labels, stat.total_runs)
            failures.add_metric(labels, stat.total_failures)
            last_failed.add_metric(labels, 1.0 if stat.last_run_failed else 0.0)
            if stat.seconds_since_success is not None:
                since_success.add_metric(labels, stat.seconds_since_success)
        yield from (runs, failures, last_failed, since_success)
