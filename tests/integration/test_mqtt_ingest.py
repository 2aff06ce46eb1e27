"""The MQTT ingestor as a real process against real Mosquitto and TimescaleDB, with faults.

Every test counts what was sent (and acknowledged by the broker) against what was stored:
after kills and restarts, sent = stored, exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from ingest.directory import load_catalogue
from ingest.mqtt import INGEST_FAILED, MqttIngestor, MqttOptions, shutdown_client
from ingest.runtime import open_ingest_runtime
from ingest.service import IngestReport, IngestService
from rpmstore.localstack.mosquitto import GATEWAY_USER, INGEST_USER
from schema.registry import assign_device, register_device, register_patient
from tests.conftest import Broker, PgServer

pytestmark = pytest.mark.slow  # ingestor processes started, killed and restarted

WAIT_S = 60
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Bounded wait for an outcome (not a speed assertion: the limit only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Ingestor:
    """``rpmstore ingest mqtt`` as a child process."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rpmstore.cli", "ingest", "mqtt"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        wait_until(
            lambda: b"MQTT connected" in self.log_path.read_bytes()[offset:],
            "the ingestor to connect",
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Publisher:
    """The gateway account, publishing QoS 1 and recording which messages the broker acked."""

    broker: Broker
    acked: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"gw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(GATEWAY_USER, self.broker.passwords[GATEWAY_USER])
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", self.broker.instance.port)
        self.client.loop_start()

    def _on_publish(self, *args: object) -> None:
        mid = args[2]
        assert isinstance(mid, int)
        with self.lock:
            self.acked.add(mid)

    def publish(self, device: uuid.UUID, payload: bytes) -> int:
        info = self.client.publish(f"rpm/v1/devices/{device}/readings", payload, qos=1)
        return info.mid

    def wait_acked(self, mids: list[int]) -> None:
        wait_until(lambda: self.acked.issuperset(mids), "broker PUBACKs")

    def close(self) -> None:
        shutdown_client(self.client)


@dataclass(frozen=True)
class MqttWard:
    db_url: str
    conn: psycopg.Connection
    devices: list[uuid.UUID]
    make_ingestor: Callable[[str], Ingestor]
    publisher: Publisher

    def stored(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM rpm.readings").fetchone()
        assert row is not None
        return int(row[0])

    def quarantined(self) -> list[tuple[str, bytes, str | None]]:
        return self.conn.execute(
            "SELECT reason, raw_payload, topic FROM rpm.ingest_quarantine "
            "JOIN rpm.ingest_payloads USING (payload_sha256) "
            "ORDER BY quarantine_id"
        ).fetchall()


def reading_payload(device: uuid.UUID, n: int) -> bytes:
    at = START + timedelta(seconds=n)
    return json.dumps(
        {
            "device_id": str(device),
            "readings": [
                {"metric": "spo2", "value": 90 + n % 10, "unit": "%", "time": at.isoformat()}
            ],
        }
    ).encode()


@pytest.fixture
def mqtt_ward(
    db_url: str, conn: psycopg.Connection, mqtt_broker: Broker, tmp_path: Path
) -> Iterator[MqttWard]:
    devices = []
    for n in range(3):
        patient = register_patient(conn)
        device = register_device(
            conn, kind="pulse_oximeter", manufacturer="Acme", model="OX-1", serial_number=f"M-{n}"
        ).device_id
        assign_device(
            conn, device_id=device, patient_id=patient, valid_from=START - timedelta(days=1)
        )
        devices.append(device)
    group = f"g{uuid.uuid4().hex[:8]}"
    ingestors: list[Ingestor] = []

    def make_ingestor(name: str) -> Ingestor:
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "MQTT_URL": mqtt_broker.url(INGEST_USER),
            "RPMSTORE_MQTT_CLIENT_ID": f"{group}-{name}",
            "RPMSTORE_MQTT_GROUP": group,
            "RPMSTORE_LOG_FORMAT": "json",
        }
        ingestor = Ingestor(env, tmp_path / f"ingestor-{name}.log")
        ingestors.append(ingestor)
        return ingestor

    publisher = Publisher(mqtt_broker)
    try:
        yield MqttWard(db_url, conn, devices, make_ingestor, publisher)
    finally:
        publisher.close()
        for ingestor in ingestors:
            ingestor.stop()


def test_readings_garbage_and_forged_payloads(mqtt_ward: MqttWard) -> None:
    """Valid readings are stored; garbage and forged payloads are quarantined with the raw
    bytes and acknowledged, so they never block the consumer."""
    ingestor = mqtt_ward.make_ingestor("a")
    ingestor.start()
    device, other = mqtt_ward.devices[0], mqtt_ward.devices[1]
    forged = json.dumps(
        {"device_id": str(other), "readings": json.loads(reading_payload(other, 1))["readings"]}
    ).encode()
    mids = [
        mqtt_ward.publisher.publish(device, b"\x00\x01 not json at all"),
        mqtt_ward.publisher.publish(device, forged),
        mqtt_ward.publisher.publish(device, reading_payload(device, 2)),
    ]
    mqtt_ward.publisher.wait_acked(mids)
    wait_until(lambda: mqtt_ward.stored() == 1 and len(mqtt_ward.quarantined()) == 2, "outcomes")
    # Messages are processed concurrently, so quarantine order is not arrival order.
    assert sorted(mqtt_ward.quarantined()) == [
        ("device_mismatch", forged, f"rpm/v1/devices/{device}/readings"),
        ("malformed_json", b"\x00\x01 not json at all", f"rpm/v1/devices/{device}/readings"),
    ]


def test_ambiguous_json_is_quarantined_whole_with_its_reason(mqtt_ward: MqttWard) -> None:
    """Two readings arrays in one message were once read as the second alone: its first
    reading vanished without a trace. Now the message is quarantined whole, raw bytes kept."""
    ingestor = mqtt_ward.make_ingestor("a")
    ingestor.start()
    device = mqtt_ward.devices[0]
    first, second = reading_payload(device, 1), reading_payload(device, 2)
    ambiguous = first[:-1] + b", " + second[second.index(b'"readings"') :]
    assert ambiguous.count(b'"readings"') == 2
    mids = [mqtt_ward.publisher.publish(device, ambiguous)]
    mqtt_ward.publisher.wait_acked(mids)
    wait_until(lambda: len(mqtt_ward.quarantined()) == 1, "the quarantine row")
    assert mqtt_ward.quarantined() == [
        ("duplicate_member", ambiguous, f"rpm/v1/devices/{device}/readings")
    ]
    assert mqtt_ward.stored() == 0


def test_unknown_device_topic_is_quarantined(mqtt_ward: MqttWard) -> None:
    mqtt_ward.make_ingestor("a").start()
    stranger = uuid.uuid4()
    mids = [mqtt_ward.publisher.publish(stranger, reading_payload(stranger, 1))]
    mqtt_ward.publisher.wait_acked(mids)
    wait_until(lambda: len(mqtt_ward.quarantined()) == 1, "the quarantine row")
    assert mqtt_ward.quarantined()[0][0] == "unknown_device"
    assert mqtt_ward.stored() == 0


def _publish_stream(ward: MqttWard, count: int, during: Callable[[int], None]) -> None:
    """Publish ``count`` single-reading messages round-robin over the ward's devices, calling
    ``during(n)`` after each; then wait until the broker acknowledged every one."""
    mids = []
    for n in range(count):
        device = ward.devices[n % len(ward.devices)]
        mids.append(ward.publisher.publish(device, reading_payload(device, n)))
        during(n)
        time.sleep(0.002)
    ward.publisher.wait_acked(mids)


def test_ingestor_killed_mid_stream_loses_and_duplicates_nothing(mqtt_ward: MqttWard) -> None:
    ingestor = mqtt_ward.make_ingestor("a")
    ingestor.start()
    sent = 600

    def fault(n: int) -> None:
        if n == 200:
            ingestor.kill()
        elif n == 350:
            ingestor.start()

    _publish_stream(mqtt_ward, sent, fault)
    wait_until(lambda: mqtt_ward.stored() >= sent, "every reading to be stored")
    time.sleep(1)  # a duplicate, had one been written, would have had time to land
    assert mqtt_ward.stored() == sent
    assert mqtt_ward.quarantined() == []


def test_postgres_restart_mid_stream_loses_and_duplicates_nothing(
    mqtt_ward: MqttWard, pg_server: PgServer
) -> None:
    if pg_server.instance is None:
        pytest.skip("RPMSTORE_TEST_ADMIN_DATABASE_URL points at a server the tests cannot restart")
    instance = pg_server.instance
    mqtt_ward.make_ingestor("a").start()
    sent = 400

    def fault(n: int) -> None:
        if n == 150:
            instance.stop(mode="fast")
        elif n == 250:
            instance.start()

    _publish_stream(mqtt_ward, sent, fault)
    # The ward's own connection died with the restart; look with a new one.
    with psycopg.connect(mqtt_ward.db_url, autocommit=True) as conn:
        ward = dataclasses.replace(mqtt_ward, conn=conn)
        wait_until(lambda: ward.stored() >= sent, "every reading to be stored")
        time.sleep(1)
        assert ward.stored() == sent
        assert ward.quarantined() == []


def test_two_ingestors_share_the_load_and_survive_one_being_killed(mqtt_ward: MqttWard) -> None:
    first, second = mqtt_ward.make_ingestor("a"), mqtt_ward.make_ingestor("b")
    first.start()
    second.start()
    sent = 600

    def fault(n: int) -> None:
        if n == 250:
            first.kill()
        elif n == 450:
            first.start()  # its persistent session holds what it had not acknowledged

    _publish_stream(mqtt_ward, sent, fault)
    wait_until(lambda: mqtt_ward.stored() >= sent, "every reading to be stored")
    time.sleep(1)
    assert mqtt_ward.stored() == sent
    batches = mqtt_ward.conn.execute(
        "SELECT count(DISTINCT ingestor) FROM rpm.ingest_batches WHERE row_count > 0"
    ).fetchone()
    assert batches is not None
    assert batches[0] >= 2, "both ingestor processes stored readings"


def test_retiring_a_dead_ingestors_session_releases_what_it_held(mqtt_ward: MqttWard) -> None:
    """An ingestor killed for good keeps its share of the shared subscription queued in its
    persistent session (Mosquitto keeps routing to it). ``--retire`` stores what that session
    holds and ends it, after which the surviving ingestor receives everything."""
    gone, survivor = mqtt_ward.make_ingestor("gone"), mqtt_ward.make_ingestor("survivor")
    gone.start()
    survivor.start()

    def fault(n: int) -> None:
        if n == 50:
            gone.kill()

    _publish_stream(mqtt_ward, 300, fault)
    # The limit this guards against: the dead session's share is not redistributed.
    time.sleep(3)
    held = 300 - mqtt_ward.stored()
    assert held > 0, "Mosquitto now redistributes a dead session's share; revisit --retire"
    retire = subprocess.run(
        [sys.executable, "-m", "rpmstore.cli", "ingest", "mqtt", "--retire"],
        env=gone.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert retire.returncode == 0, retire.stderr.decode()[-2000:]
    wait_until(lambda: mqtt_ward.stored() >= 300, "every reading to be stored")

    # With the session gone, the survivor alone now gets every new reading.
    mids = []
    for n in range(300, 400):
        device = mqtt_ward.devices[n % len(mqtt_ward.devices)]
        mids.append(mqtt_ward.publisher.publish(device, reading_payload(device, n)))
    mqtt_ward.publisher.wait_acked(mids)
    wait_until(lambda: mqtt_ward.stored() >= 400, "readings after the retirement")
    time.sleep(1)
    assert mqtt_ward.stored() == 400


class _DefectiveService(IngestService):
    """Our own ingest service with a defect that only one payload triggers (the servers stay
    real): stands for any bug a particular message could hit."""

    async def ingest(self, raw: bytes, **kwargs: Any) -> IngestReport:
        if b'"poison"' in raw:
            raise RuntimeError("a defect this payload triggers")
        return await super().ingest(raw, **kwargs)


def test_a_message_that_keeps_failing_is_quarantined_and_does_not_stall_the_rest(
    mqtt_ward: MqttWard, mqtt_broker: Broker
) -> None:
    device = mqtt_ward.devices[0]
    poison = json.dumps({"device_id": str(device), "readings": [], "poison": 1}).encode()
    payloads = [reading_payload(device, 1), poison, reading_payload(device, 2)]

    async def run() -> int:
        registry = CollectorRegistry()
        async with open_ingest_runtime(mqtt_ward.db_url, source="mqtt", registry=registry) as rt:
            conn = await asyncpg.connect(mqtt_ward.db_url)
            try:
                catalogue = await load_catalogue(conn)
            finally:
                await conn.close()
            defective = _DefectiveService(
                committer=rt.committer, catalogue=catalogue, metrics=rt.metrics
            )
            ingestor = MqttIngestor(
                dataclasses.replace(rt, service=defective),
                MqttOptions(
                    url=mqtt_broker.url(INGEST_USER),
                    client_id=f"poison-{uuid.uuid4().hex[:6]}",
                    group="",
                ),
            )
            stop = asyncio.Event()
            running = asyncio.create_task(ingestor.run(stop))
            await asyncio.wait_for(ingestor.subscribed.wait(), WAIT_S)
            mids = [mqtt_ward.publisher.publish(device, p) for p in payloads]
            await asyncio.to_thread(mqtt_ward.publisher.wait_acked, mids)
            await asyncio.to_thread(
                wait_until, lambda: ingestor.messages_acked == 3, "all three acknowledged"
            )
            stop.set()
            await running
            return ingestor.messages_acked

    assert asyncio.run(run()) == 3
    assert mqtt_ward.stored() == 2
    ((reason, raw, topic),) = mqtt_ward.quarantined()
    assert (reason, raw, topic) == (INGEST_FAILED, poison, f"rpm/v1/devices/{device}/readings")


def test_a_redelivered_message_of_bad_readings_is_quarantined_once(mqtt_ward: MqttWard) -> None:
    """The same message twice (a redelivery, or a device resending it): its valid reading is a
    duplicate the second time, and its rejected readings are recognised, not quarantined
    again; the raw bytes are kept once however many readings were rejected."""
    mqtt_ward.make_ingestor("a").start()
    device = mqtt_ward.devices[0]
    message = json.loads(reading_payload(device, 1))
    unknown = {**message["readings"][0], "metric": "no_such_metric"}
    message["readings"] += [{**unknown, "value": n} for n in range(50)]
    payload = json.dumps(message).encode()
    mqtt_ward.publisher.wait_acked([mqtt_ward.publisher.publish(device, payload)])
    mqtt_ward.publisher.wait_acked([mqtt_ward.publisher.publish(device, payload)])

    def duplicates() -> int:
        row = mqtt_ward.conn.execute(
            "SELECT coalesce(sum(duplicate_count), 0) FROM rpm.ingest_batches"
        ).fetchone()
        return int(row[0]) if row else 0

    wait_until(lambda: duplicates() == 1, "the second copy to be committed")
    assert mqtt_ward.stored() == 1
    assert len(mqtt_ward.quarantined()) == 50
    assert mqtt_ward.conn.execute("SELECT count(*) FROM rpm.ingest_payloads").fetchone() == (1,)
