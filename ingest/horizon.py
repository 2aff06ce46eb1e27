"""The raw retention horizon, cached for validation: readings older than it are refused.

A reading measured before the horizon would land in (or re-create) a chunk that the next
retention run drops, so it is quarantined as ``too_old`` instead of being acknowledged and then
silently lost. The horizon moves by a day a day; refreshing it every minute is plenty, and a
minute's lag is harmless because retention only drops whole chunks before the horizon.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import asyncpg

from schema.errors import is_transient
from schema.horizon import fetch_raw_horizon

log = logging.getLogger(__name__)


class RetentionHorizon:
    def __init__(self, pool: asyncpg.Pool, *, refresh_s: float = 60.0) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self.value: datetime | None = None

    async def refresh(self) -> None:
        self.value = await fetch_raw_horizon(self._pool)

    async def run(self) -> None:
        """Refresh forever; a failed refresh keeps the last known horizon."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception as exc:
                # Whatever the cause, keep refreshing: a stopped loop would leave the horizon
                # stale for the life of the process. Only a transient failure is expected.
                if is_transient(exc):
                    log.warning("could not refresh the retention horizon: %s", exc)
                else:
                    log.exception("could not refresh the retention horizon")
