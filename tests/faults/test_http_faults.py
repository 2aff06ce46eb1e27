"""The API server killed (SIGKILL) and restarted, or PostgreSQL restarted under it, while
devices keep posting and retrying.

The devices are the ward simulator's HTTP sender: each device posts with its own token and
retries a request whose connection failed (its fate unknown: it may have committed before the
server died). Afterwards every request has been answered, readings sent = readings stored, and
none is stored twice: a retry of a committed request is recognised as duplicates.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rpmstore.localstack.debian_root import DebianRoot
from rpmstore.simulate_send import Delivery, HttpSender
from rpmstore.simulate_ward import PlannedPayload
from tests.conftest import PgServer
from tests.faults.conftest import (
    WAIT_S,
    FaultWard,
    assert_amcheck_clean,
    assert_exactly_once,
    wait_until,
)

pytestmark = pytest.mark.slow  # servers killed and restarted under load

PAYLOADS = 450
RATE = 150.0  # payloads per second


async def _post_all(api_url: str, payloads: list[PlannedPayload], outcome: list[Delivery]) -> None:
    async with HttpSender(api_url, concurrency=16) as sender:
        start = time.monotonic()
        for n, payload in enumerate(payloads):
            await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
            await sender.submit(payload)
        await sender.finish(WAIT_S)
        outcome.append(sender.delivery)


def _start_devices(fault_ward: FaultWard, port: int) -> tuple[list[PlannedPayload], list[Delivery]]:
    payloads = fault_ward.payloads(PAYLOADS)
    outcome: list[Delivery] = []
    devices = threading.Thread(
        target=asyncio.run, args=(_post_all(f"http://127.0.0.1:{port}", payloads, outcome),)
    )
    devices.start()
    fault_ward.threads.append(devices)
    wait_until(lambda: fault_ward.stored_rows() > 0, "the first readings to be stored")
    return payloads, outcome


def test_postgres_restart_under_the_api_while_devices_post(
    fault_ward: FaultWard, pg_server: PgServer, debian_root: DebianRoot
) -> None:
    """Requests wait while the group committer retries its batch against the returning
    database (or get a 503 and retry): every request is answered in the end, exactly once."""
    if pg_server.instance is None:
        pytest.skip("RPMSTORE_TEST_ADMIN_DATABASE_URL points at a server the tests cannot restart")
    _, port = fault_ward.start_api()
    payloads, outcome = _start_devices(fault_ward, port)
    pg_server.instance.stop(mode="fast")
    time.sleep(1.0)
    pg_server.instance.start()
    for thread in fault_ward.threads:
        thread.join(timeout=WAIT_S * 2)
    (delivery,) = outcome
    assert delivery.undelivered_payloads == 0, delivery.transport
    assert delivery.delivered_payloads == len(payloads), "every request was answered in the end"
    assert_exactly_once(fault_ward, payloads, payloads)
    fault_ward.assert_alerts_exact()
    assert_amcheck_clean(debian_root, fault_ward.admin_db_url)


def test_api_killed_and_restarted_while_devices_retry(
    fault_ward: FaultWard, debian_root: DebianRoot
) -> None:
    api, port = fault_ward.start_api()
    payloads, outcome = _start_devices(fault_ward, port)
    api.kill()  # requests in flight die with it, committed or not
    time.sleep(0.5)
    api.start()  # same port: the devices' retries find it again
    for thread in fault_ward.threads:
        thread.join(timeout=WAIT_S * 2)
    (delivery,) = outcome
    assert delivery.undelivered_payloads == 0, delivery.transport
    assert delivery.delivered_payloads == len(payloads), "every request was answered in the end"
    assert delivery.transport["connection errors"] > 0, "the kill interrupted requests"
    assert_exactly_once(fault_ward, payloads, payloads)
    fault_ward.assert_alerts_exact()
    assert_amcheck_clean(debian_root, fault_ward.admin_db_url)
