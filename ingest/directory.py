"""Cached lookups of the catalogue and of devices, so validation never queries per reading.

Devices are cached for minutes and dropped the moment they change: the database announces
every change to a device or its assignments on channel ``rpm_device_changed`` (migration
0012), which :class:`DeviceDirectory` listens to on a connection of its own. Without that
connection (not started, or lost and not yet back) entries live only a few seconds, and the
whole cache is dropped whenever listening (re)starts, since changes may have been missed. The
catalogue is loaded once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import asyncpg

from ingest.catalogue import Catalogue, MetricSpec, UnitConversion
from ingest.committer import DatabaseUnavailableError
from ingest.devices import Assignment, DeviceContext
from schema.credentials import hash_device_token
from schema.errors import is_transient
from schema.sql import queries

log = logging.getLogger(__name__)

# Unknown ids are cached too (garbage topics must not each cost a query), so the caches are
# bounded: past this many entries they start afresh.
MAX_CACHED = 100_000
DEVICE_CHANGED_CHANNEL = "rpm_device_changed"


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
    """Device status and assignment periods by device id or by bearer token, cached."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        database_url: str | None = None,
        ttl_s: float = 300.0,
        unwatched_ttl_s: float = 5.0,
    ) -> None:
        """``database_url``: where to listen for device changes (None: never listen, every
        entry lives ``unwatched_ttl_s``). ``ttl_s`` bounds an entry's life while listening,
        as a safety net only."""
        self._pool = pool
        self._database_url = database_url
        self._ttl_s = ttl_s
        self._unwatched_ttl_s = unwatched_ttl_s
        self._by_id: dict[uuid.UUID, tuple[float, DeviceContext | None]] = {}
        self._by_token: dict[bytes, tuple[float, uuid.UUID | None]] = {}
        self._q = queries("ingest_lookup")
        self._listening = False
        # Bumped by every change notice and every (re)start of listening: a lookup that
        # straddles one may have read the old state and is not cached.
        self._generation = 0
        self._watcher: asyncio.Task[None] | None = None
        self.listening_started = asyncio.Event()  # for tests: notices are being received

    async def start(self) -> None:
        if self._database_url is not None and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="device-changes")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None

    async def by_id(self, device_id: uuid.UUID) -> DeviceContext | None:
        cached = self._by_id.get(device_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        generation = self._generation
        row = await self._fetch("device_by_id", device_id)
        context = None if row is None else _context(row)
        self._remember(generation, device_id, context)
        return context

    async def by_token(self, token: str) -> DeviceContext | None:
        """The device a bearer token was issued to (None for an unknown token)."""
        digest = hash_device_token(token)
        cached = self._by_token.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return None if cached[1] is None else await self.by_id(cached[1])
        generation = self._generation
        row = await self._fetch("device_by_token_hash", digest)
        context = None if row is None else _context(row)
        if generation == self._generation:
            if len(self._by_token) >= MAX_CACHED:
                self._by_token.clear()
            device_id = None if context is None else context.device_id
            self._by_token[digest] = (self._expiry(), device_id)
        if context is not None:
            self._remember(generation, context.device_id, context)
        return context

    async def _fetch(self, query: str, key: object) -> asyncpg.Record | None:
        try:
            async with self._pool.acquire() as conn:
                row: asyncpg.Record | None = await conn.fetchrow(self._q[query], key)
                return row
        except Exception as exc:
            if not is_transient(exc):
                # A defect (a missing privilege, a table the code does not match): not
                # "try again later", so not disguised as unavailability.
                raise
            raise DatabaseUnavailableError(str(exc)) from exc

    def _remember(
        self, generation: int, device_id: uuid.UUID, context: DeviceContext | None
    ) -> None:
        if generation != self._generation:
            return  # a change was announced meanwhile: what was read may be stale
        if len(self._by_id) >= MAX_CACHED:
            self._by_id.clear()
        self._by_id[device_id] = (self._expiry(), context)

    def _expiry(self) -> float:
        return time.monotonic() + (self._ttl_s if self._listening else self._unwatched_ttl_s)

    def _forget(self, device_id: uuid.UUID | None) -> None:
        """Drop ``device_id`` (None: everything) from the caches."""
        self._generation += 1
        if device_id is None:
            self._by_id.clear()
            self._by_token.clear()
            return
        self._by_id.pop(device_id, None)
        # Its token may have changed; unknown tokens may now be its new one.
        stale = [d for d, (_, known) in self._by_token.items() if known in (device_id, None)]
        for digest in stale:
            del self._by_token[digest]

    def _on_notice(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            device_id: uuid.UUID | None = uuid.UUID(payload)
        except ValueError:
            device_id = None  # not ours to interpret: drop everything
        self._forget(device_id)

    async def _watch(self) -> None:
        """Listen for device changes; reconnect with backoff when the connection is lost."""
        backoff = 0.5
        assert self._database_url is not None
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._database_url,
                    server_settings={"application_name": "rpmstore-ingest-devices"},
                )
            except Exception as exc:
                log.warning("cannot listen for device changes yet: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(DEVICE_CHANGED_CHANNEL, self._on_notice)
                # Whatever was cached before now may have missed a change.
                self._forget(None)
                self._listening = True
                self.listening_started.set()
                backoff = 0.5
                log.info("listening for device changes")
                await lost.wait()
                log.warning("device change notices lost; caching devices briefly until back")
            except Exception as exc:
                log.warning("device change listener failed: %s", exc)
            finally:
                self._listening = False
                self._forget(None)
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def _context(row: asyncpg.Record) -> DeviceContext:
    return DeviceContext(
        row["device_id"],
        row["status"],
        tuple(
            Assignment(valid_from, valid_until, patient_id)
            for valid_from, valid_until, patient_id in zip(
                row["valid_from"], row["valid_until"], row["patient_ids"], strict=True
            )
        ),
    )
