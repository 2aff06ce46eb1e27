"""Everything an ingesting process needs, built and torn down in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from prometheus_client import CollectorRegistry

from ingest.committer import GroupCommitter
from ingest.directory import DeviceDirectory, load_catalogue
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


@asynccontextmanager
async def open_ingest_runtime(
    database_url: str,
    *,
    source: Source,
    registry: CollectorRegistry,
    limits: IngestLimits | None = None,
) -> AsyncIterator[IngestRuntime]:
    """Pool, catalogue, device directory and a started group committer; all closed on exit."""
    limits = limits or IngestLimits()
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
        committer = GroupCommitter(
            pool,
            source=source,
            max_batch_rows=limits.max_batch_rows,
            max_delay_s=limits.max_delay_s,
            max_pending_rows=limits.max_pending_rows,
            workers=limits.workers,
            metrics=metrics,
        )
        await committer.start()
        try:
            yield IngestRuntime(
                service=IngestService(committer=committer, catalogue=catalogue, metrics=metrics),
                devices=DeviceDirectory(pool),
                committer=committer,
                metrics=metrics,
            )
        finally:
            await committer.stop()
