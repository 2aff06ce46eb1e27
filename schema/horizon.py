"""The raw readings' retention horizon, for ingest to refuse readings that retention would drop.

A reading measured before the horizon would re-create (or land in) a chunk that the next
retention run drops, so ingest refuses it with reason ``too_old``. The query has no parameters,
so it runs unchanged on asyncpg (ingest) and psycopg; it returns NULL when no policy applies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from schema.sql import queries


class _FetchVal(Protocol):
    async def fetchval(self, query: str, *args: Any) -> Any: ...


def raw_horizon_query() -> str:
    """SQL returning the oldest measured_at rpm.readings keeps (timestamptz, or NULL)."""
    return queries("retention")["raw_horizon"]


async def fetch_raw_horizon(conn: _FetchVal) -> datetime | None:
    """The horizon now, from an asyncpg connection or pool (anything with ``fetchval``)."""
    value = await conn.fetchval(raw_horizon_query())
    return value if isinstance(value, datetime) else None
