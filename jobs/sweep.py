"""The missing-data sweep as a job: once, or every ``interval_s`` until stopped.

The sweep itself (open missing-data alerts, resolve those whose data resumed, evaluate parked
evaluations and stranded outbox batches) is ``alerting.sweep_missing_data``; this module owns
the connection and the schedule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from alerting import SweepResult, sweep_missing_data


async def sweep_periodically(
    database_url: str,
    *,
    interval_s: float | None,
    stop: asyncio.Event,
    on_result: Callable[[SweepResult], None],
) -> None:
    """Sweep now; with ``interval_s``, again every ``interval_s`` seconds until ``stop`` is set."""
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            on_result(await sweep_missing_data(conn, datetime.now(UTC)))
            if interval_s is None:
                return
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                return
            except TimeoutError:
                continue
    finally:
        await conn.close()
