"""The shipped broker policy on a real Mosquitto: devices write only their own topic."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ingest.mqtt import shutdown_client
from rpmstore.localstack.mosquitto import INGEST_USER
from tests.conftest import Broker
from tests.integration.test_device_broker_accounts import connect_code

TIMEOUT_S = 10


def readings_topic(device: str) -> str:
    return f"rpm/v1/devices/{device}/readings"


@dataclass
class Session:
    """A connected MQTT v5 client that records acknowledgements and received messages."""

    client: mqtt.Client
    publish_codes: dict[int, ReasonCode] = field(default_factory=dict)
    subscribe_codes: dict[int, list[ReasonCode]] = field(default_factory=dict)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: object) -> None:
        assert callable(predicate)
        with self.changed:
            assert self.changed.wait_for(predicate, timeout=TIMEOUT_S), "timed out waiting"

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        self.wait_for(lambda: info.mid in self.publish_codes)
        return self.publish_codes[info.mid]

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        self.wait_for(lambda: mid in self.subscribe_codes)
        return self.subscribe_codes[mid][0]


@contextmanager
def session(broker: Broker, user: str) -> Iterator[Session]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{user}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(user, broker.passwords[user])
    state = Session(client)
    connected: list[ReasonCode] = []

    def notify(update: object) -> None:
        assert callable(update)
        with state.changed:
            update()
            state.changed.notify_all()

    client.on_connect = lambda _c, _u, _f, code, _p: notify(lambda: connected.append(code))
    client.on_publish = lambda _c, _u, mid, code, _p: notify(
        lambda: state.publish_codes.__setitem__(mid, code)
    )
    client.on_subscribe = lambda _c, _u, mid, codes, _p: notify(
        lambda: state.subscribe_codes.__setitem__(mid, codes)
    )
    client.on_message = lambda _c, _u, msg: notify(
        lambda: state.received.append((msg.topic, bytes(msg.payload)))
    )
    client.connect("127.0.0.1", broker.instance.port)
    client.loop_start()
    try:
        state.wait_for(lambda: connected)
        assert not connected[0].is_failure, f"{user} could not connect: {connected[0]}"
        yield state
    finally:
        shutdown_client(client)


def test_device_publishes_only_to_its_own_topic(mqtt_broker: Broker) -> None:
    with session(mqtt_broker, INGEST_USER) as ingestor, session(mqtt_broker, "device-a") as device:
        granted = ingestor.subscribe(
            f"$share/pytest-{uuid.uuid4().hex[:6]}/rpm/v1/devices/+/readings"
        )
        assert not granted.is_failure, f"ingestor subscription refused: {granted}"

        own = device.publish(readings_topic("device-a"), b'{"own": true}')
        forged = device.publish(readings_topic("device-b"), b'{"forged": true}')
        assert not own.is_failure
        assert forged.getName() == "Not authorized"

        ingestor.wait_for(lambda: len(ingestor.received) >= 1)
        # Give a forged message, had it been routed, the same chance to arrive as the real one.
        device.publish(readings_topic("device-a"), b'{"marker": true}')
        ingestor.wait_for(lambda: len(ingestor.received) >= 2)
    topics = [topic for topic, _ in ingestor.received]
    assert topics == [readings_topic("device-a")] * 2
    assert b'{"forged": true}' not in [payload for _, payload in ingestor.received]


def test_device_cannot_read_other_devices_readings(mqtt_broker: Broker) -> None:
    """Mosquitto grants the subscription but never delivers what the ACL does not let it read."""
    with (
        session(mqtt_broker, INGEST_USER) as ingestor,
        session(mqtt_broker, "device-a") as snooper,
        session(mqtt_broker, "device-b") as victim,
    ):
        ingestor.subscribe(readings_topic("device-b"))
        snooper.subscribe(readings_topic("device-b"))
        assert not victim.publish(readings_topic("device-b"), b'{"private": true}').is_failure
        ingestor.wait_for(lambda: len(ingestor.received) == 1)
        # Messages on one connection leave the broker in order: once the snooper's own PUBACK
        # is back, anything routed to it before would have arrived.
        snooper.publish(readings_topic("device-a"), b"{}")
    assert snooper.received == []


def test_wrong_password_is_refused(mqtt_broker: Broker) -> None:
    assert connect_code(mqtt_broker, "device-a", "not-the-password").is_failure
    assert not connect_code(mqtt_broker, "device-a", mqtt_broker.passwords["device-a"]).is_failure
