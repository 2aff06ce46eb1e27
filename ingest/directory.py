"""Cached lookups of the catalogue and of devices, so validation never queries per reading.

Device entries live for ``ttl_s`` seconds: a suspended device or a new assignment is seen by
ingest within that time. The catalogue is loaded once per process.
"""

from __future__ import annotations

import time
import uuid

import asyncpg

from ingest.catalogue import Catalogue, MetricSpec, UnitConversion
from ingest.committer import RETRYABLE_DATABASE_ERRORS, DatabaseUnavailableError
from ingest.devices import Assignment, DeviceContext
from schema.credentials import hash_device_token
from schema.sql import queries

# Unknown ids are cached too (garbage topics must not each cost a query), so the caches are
# bounded: past this many entries they start afresh.
MAX_CACHED = 100_000


async def load_catalogue(conn: asyncpg.Connection) -> Catalogue:
    q = queries("ingest_lookup")
    metrics = {
        row["metric_id"]: MetricSpec(
            metric_id=row["metric_id"],
            code=row["code"],
            loinc_code=row["loinc_code"],
            canonical_unit=row["canonical_unit"],
            plausible_min=row["plausible_min"],
            plausible_max=row["plausible_max"],
        )
        for row in await conn.fetch(q["catalogue_metrics"])
    }
    names: dict[str, int] = {}
    for spec in metrics.values():
        names[spec.code] = spec.metric_id
        names[spec.loinc_code] = spec.metric_id
    for row in await conn.fetch(q["catalogue_aliases"]):
        names[row["alias"]] = row["metric_id"]
    conversions = {
        (row["metric_id"], row["unit"]): UnitConversion(row["scale"], row["shift"])
        for row in await conn.fetch(q["catalogue_conversions"])
    }
    return Catalogue(metrics=metrics, metric_ids_by_name=names, conversions=conversions)


class DeviceDirectory:
    """Device status and assignment periods by device id or by bearer token, cached briefly."""

    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 5.0) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._by_id: dict[uuid.UUID, tuple[float, DeviceContext | None]] = {}
        self._by_token: dict[bytes, tuple[float, uuid.UUID | None]] = {}
        self._q = queries("ingest_lookup")

    async def by_id(self, device_id: uuid.UUID) -> DeviceContext | None:
        cached = self._by_id.get(device_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(self._q["device_by_id"], device_id)
                context = None if row is None else await self._context(conn, row)
        except (*RETRYABLE_DATABASE_ERRORS, asyncpg.PostgresError) as exc:
            # A lookup is a plain SELECT: any database error means "not available now".
            raise DatabaseUnavailableError(str(exc)) from exc
        if len(self._by_id) >= MAX_CACHED:
            self._by_id.clear()
        self._by_id[device_id] = (time.monotonic() + self._ttl_s, context)
        return context

    async def by_token(self, token: str) -> DeviceContext | None:
        """The device a bearer token was issued to (None for an unknown token)."""
        digest = hash_device_token(token)
        cached = self._by_token.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return None if cached[1] is None else await self.by_id(cached[1])
        try:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(self._q["device_by_token_hash"], digest)
        except (*RETRYABLE_DATABASE_ERRORS, asyncpg.PostgresError) as exc:
            # A lookup is a plain SELECT: any database error means "not available now".
            raise DatabaseUnavailableError(str(exc)) from exc
        device_id = None if row is None else row["device_id"]
        if len(self._by_token) >= MAX_CACHED:
            self._by_token.clear()
        self._by_token[digest] = (time.monotonic() + self._ttl_s, device_id)
        return None if device_id is None else await self.by_id(device_id)

    async def _context(self, conn: asyncpg.Connection, row: asyncpg.Record) -> DeviceContext:
        assignments = tuple(
            Assignment(a["valid_from"], a["valid_until"], a["patient_id"])
            for a in await conn.fetch(self._q["device_assignments"], row["device_id"])
        )
        return DeviceContext(row["device_id"], row["status"], assignments)
