"""The alert service as its own process: the outbox evaluated continuously, plus the sweep.

Used when ingesting processes run with ``RPMSTORE_ALERTS_INLINE=false``; the command that
starts it (``rpmstore alerts run``) lives in the composition root and owns the signals.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from alerting.worker import AlertWorker

log = logging.getLogger(__name__)


async def run_alert_service(
    database_url: str, *, poll_s: float, sweep_interval_s: float, stop: asyncio.Event
) -> None:
    """Evaluate the alert outbox and sweep until ``stop`` is set; then finish what was claimed."""
    async with asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=2,  # the evaluator's connection and the sweep's
        server_settings={"application_name": "rpmstore-alerts"},
        command_timeout=60,
    ) as pool:
        worker = AlertWorker(pool, sweep_interval_s=sweep_interval_s, poll_interval_s=poll_s)
        await worker.start()
        log.info("alert worker running", extra={"poll_s": poll_s})
        try:
            await stop.wait()
        finally:
            await worker.stop()
