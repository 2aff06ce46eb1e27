"""Devices log in to Mosquitto as themselves (device id + token), and only while active."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ingest.mqtt import shutdown_client
from schema.registry import broker_device_accounts, register_device
from tests.conftest import Broker

pytestmark = pytest.mark.slow  # waits for the broker to reload its accounts


def connect_code(broker: Broker, username: str, password: str) -> ReasonCode:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    codes: list[ReasonCode] = []
    done = threading.Event()

    def on_connect(*args: object) -> None:
        code = args[3]
        assert isinstance(code, ReasonCode)
        codes.append(code)
        done.set()

    client.on_connect = on_connect
    client.connect_async("127.0.0.1", broker.instance.port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        shutdown_client(client)
    return codes[0]


def test_registered_device_logs_in_with_its_token_until_suspended(
    conn: psycopg.Connection, mqtt_broker: Broker
) -> None:
    device = register_device(
        conn, kind="glucose_meter", manufacturer="Acme", model="CGM", serial_number="B-1"
    )
    username = str(device.device_id)
    assert connect_code(mqtt_broker, username, device.token).is_failure, "not provisioned yet"

    mqtt_broker.instance.set_device_accounts(mqtt_broker.passwords, broker_device_accounts(conn))
    # SIGHUP makes Mosquitto reload asynchronously: the first attempts may still be refused.
    codes = [connect_code(mqtt_broker, username, device.token) for _ in range(50)]
    assert any(not code.is_failure for code in codes)
    assert connect_code(mqtt_broker, username, "a guessed token").is_failure

    conn.execute(
        "UPDATE rpm.devices SET status = 'suspended' WHERE device_id = %s", (device.device_id,)
    )
    mqtt_broker.instance.set_device_accounts(mqtt_broker.passwords, broker_device_accounts(conn))
    codes = [connect_code(mqtt_broker, username, device.token) for _ in range(50)]
    assert codes[-1].is_failure, "a suspended device is locked out"
