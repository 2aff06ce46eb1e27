"""Ingest's device cache: entries live for an hour here, so only the database's change
notices (rpm_device_changed) can make a change visible; each test shows one is seen.
(``conn`` is autocommit: each change commits, and notifies, at once.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg

from ingest.devices import DeviceContext
from ingest.directory import DeviceDirectory
from schema.registry import assign_device, register_device, register_patient

HOUR = 3600.0
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@asynccontextmanager
async def directory(db_url: str) -> AsyncIterator[DeviceDirectory]:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        devices = DeviceDirectory(pool, database_url=db_url, ttl_s=HOUR, unwatched_ttl_s=HOUR)
        await devices.start()
        try:
            await asyncio.wait_for(devices.listening_started.wait(), 30)
            yield devices
        finally:
            await devices.stop()


async def eventually(
    lookup: Callable[[], Awaitable[DeviceContext | None]],
    expected: Callable[[DeviceContext | None], bool],
) -> DeviceContext | None:
    """The lookup's answer once it satisfies ``expected`` (the notice arrives asynchronously);
    the last answer after 30 s otherwise."""
    for _ in range(300):
        answer = await lookup()
        if expected(answer):
            return answer
        await asyncio.sleep(0.1)
    return answer


def test_a_suspended_device_is_seen_at_once(conn: psycopg.Connection, db_url: str) -> None:
    device = register_device(
        conn, kind="scale", manufacturer="Acme", model="S1", serial_number="DIR-1"
    )

    async def run() -> tuple[str, str]:
        async with directory(db_url) as devices:
            before = await devices.by_token(device.token)
            assert before is not None
            conn.execute(
                "UPDATE rpm.devices SET status = 'suspended' WHERE device_id = %s",
                (device.device_id,),
            )
            after = await eventually(
                lambda: devices.by_token(device.token),
                lambda c: c is not None and c.status == "suspended",
            )
            assert after is not None
            return before.status, after.status

    assert asyncio.run(run()) == ("active", "suspended")


def test_a_new_assignment_is_seen_at_once(conn: psycopg.Connection, db_url: str) -> None:
    device = register_device(
        conn, kind="scale", manufacturer="Acme", model="S1", serial_number="DIR-2"
    )
    patient = register_patient(conn)

    async def run() -> tuple[int, list[uuid.UUID]]:
        async with directory(db_url) as devices:
            before = await devices.by_id(device.device_id)
            assert before is not None
            assign_device(conn, device_id=device.device_id, patient_id=patient, valid_from=T0)
            after = await eventually(
                lambda: devices.by_id(device.device_id),
                lambda c: c is not None and len(c.assignments) == 1,
            )
            assert after is not None
            return len(before.assignments), [a.patient_id for a in after.assignments]

    assert asyncio.run(run()) == (0, [patient])


def test_an_unknown_token_becomes_known_when_its_device_is_registered(
    conn: psycopg.Connection, db_url: str
) -> None:
    async def run() -> tuple[DeviceContext | None, DeviceContext | None, uuid.UUID]:
        async with directory(db_url) as devices:
            # A token is issued at registration, so it cannot be looked up before: an unknown
            # token is cached as unknown, and a registration must drop such entries.
            unknown = await devices.by_token("not-issued")
            device = register_device(
                conn, kind="scale", manufacturer="Acme", model="S1", serial_number="DIR-3"
            )
            found = await eventually(lambda: devices.by_token(device.token), bool)
            return unknown, found, device.device_id

    unknown, found, device_id = asyncio.run(run())
    assert unknown is None
    assert found is not None and found.device_id == device_id


def test_losing_the_notice_connection_drops_the_cache_and_listening_resumes(
    conn: psycopg.Connection, db_url: str
) -> None:
    device = register_device(
        conn, kind="scale", manufacturer="Acme", model="S1", serial_number="DIR-4"
    )

    async def run() -> str:
        async with directory(db_url) as devices:
            assert await devices.by_id(device.device_id) is not None
            devices.listening_started.clear()
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'rpmstore-ingest-devices'"
                    " AND datname = current_database()"
                )
                # Changed while nobody listens: only dropping the cache on reconnect shows it.
                admin.execute(
                    "UPDATE rpm.devices SET status = 'retired' WHERE device_id = %s",
                    (device.device_id,),
                )
            await asyncio.wait_for(devices.listening_started.wait(), 30)
            after = await devices.by_id(device.device_id)
            assert after is not None
            return after.status

    assert asyncio.run(run()) == "retired"


def test_an_unassigned_period_ends_in_the_cache_too(conn: psycopg.Connection, db_url: str) -> None:
    device = register_device(
        conn, kind="scale", manufacturer="Acme", model="S1", serial_number="DIR-5"
    )
    patient = register_patient(conn)
    assign_device(conn, device_id=device.device_id, patient_id=patient, valid_from=T0)
    ended = T0 + timedelta(days=3)

    async def run() -> list[datetime | None]:
        async with directory(db_url) as devices:
            before = await devices.by_id(device.device_id)
            assert before is not None and before.assignments[0].valid_until is None
            conn.execute(
                "UPDATE rpm.device_assignments"
                " SET valid_during = tstzrange(lower(valid_during), %s) WHERE device_id = %s",
                (ended, device.device_id),
            )
            after = await eventually(
                lambda: devices.by_id(device.device_id),
                lambda c: c is not None and c.assignments[0].valid_until is not None,
            )
            assert after is not None
            return [a.valid_until for a in after.assignments]

    assert asyncio.run(run()) == [ended]
