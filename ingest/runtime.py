"""Everything an ingesting process needs, built and torn down in one place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from prometheus_client import CollectorRegistry

from alerting import AlertingOptions, AlertMetrics, AlertWorker
from ingest.committer import GroupCommitter
from ingest.directory import DeviceDirectory, load_catalogue
from ingest.horizon import RetentionHorizon
from ingest.metrics import IngestMetrics
from ingest.service import IngestService
from ingest.store import Source


@dataclass(frozen=True)
class IngestLimits:
    max_batch_rows: int = 5000
    max_delay_s: float = 0.01
    max_pending_rows: int = 100_000
    workers: int = 2
    pool_size: int = 4


@dataclass(frozen=True)
class IngestRuntime:
    service: IngestService
    devices: DeviceDirectory
    committer: GroupCommitter
    metrics: IngestMetrics
    alerts: AlertWorker | None = None  # None when this process does not evaluate alerts


@asynccontextmanager
async def open_ingest_runtime(
    database_url: str,
    *,
    source: Source,
    registry: CollectorRegistry,
    limits: IngestLimits | None = None,
    alerting: AlertingOptions | None = None,
) -> AsyncIterator[IngestRuntime]:
    """Pool, catalogue, device directory, a started group committer and alert worker; all
    closed on exit."""
    limits = limits or IngestLimits()
    alerting = alerting or AlertingOptions()
    metrics = IngestMetrics(registry)
    async with asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=limits.pool_size,
        server_settings={"application_name": f"rpmstore-ingest-{source}"},
        # A server that stops answering without closing the connection must not hang a
        # batch forever: the statement times out and the batch is retried.
        command_timeout=60,
    ) as pool:
        async with pool.acquire() as conn:
            catalogue = await load_catalogue(conn)
        horizon = RetentionHorizon(pool)
        await horizon.refresh()
        horizon_task = asyncio.create_task(horizon.run(), name="retention-horizon")
        async with _alert_worker(
            database_url, source=source, options=alerting, registry=registry
        ) as alerts:
            committer = GroupCommitter(
                pool,
                source=source,
                max_batch_rows=limits.max_batch_rows,
                max_delay_s=limits.max_delay_s,
                max_pending_rows=limits.max_pending_rows,
                workers=limits.workers,
                metrics=metrics,
                # Always: every committed batch must reach the alert engine, whether this
                # process evaluates it or another one does.
                alert_outbox=True,
                post_commit=alerts.on_commit if alerts else None,
            )
            await committer.start()
            devices = DeviceDirectory(pool, database_url=database_url)
            await devices.start()
            try:
                yield IngestRuntime(
                    service=IngestService(
                        committer=committer,
                        catalogue=catalogue,
                        metrics=metrics,
                        horizon=horizon,
                    ),
                    devices=devices,
                    committer=committer,
                    metrics=metrics,
                    alerts=alerts,
                )
            finally:
                # The committer first: the alert worker then evaluates its last batches.
                await committer.stop()
                await devices.stop()
                horizon_task.cancel()
                await asyncio.gather(horizon_task, return_exceptions=True)


@asynccontextmanager
async def _alert_worker(
    database_url: str, *, source: Source, options: AlertingOptions, registry: CollectorRegistry
) -> AsyncIterator[AlertWorker | None]:
    """The alert worker on a pool of its own, so evaluation never takes an ingest connection."""
    if not options.enabled:
        yield None
        return
    async with asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=1,
        server_settings={"application_name": f"rpmstore-alerts-{source}"},
        command_timeout=60,
    ) as pool:
        worker = AlertWorker(
            pool, sweep_interval_s=options.sweep_interval_s, metrics=AlertMetrics(registry)
        )
        await worker.start()
        try:
            yield worker
        finally:
            await worker.stop()
