"""Locust users for rpmstore: devices over HTTP and devices over MQTT, in one report.

- :class:`DeviceOverHttp`: ``POST /v1/readings`` with the device's own bearer token.
- :class:`DeviceOverMqtt`: a custom user that connects to the broker as its device (device id
  and token, as ``rpmstore broker sync`` installs them), publishes QoS 1 to its own topic with
  paho-mqtt 2.x, and reports each publish with its PUBACK latency through
  ``environment.events.request.fire``, so MQTT appears next to HTTP in the stats, CSV and HTML.

Each user owns one registered device and sends that device's payloads (the ward simulator's
``TrafficPlan``: live readings plus shares of exact re-sends and late readings) at a constant
rate. :class:`Clinician` users work the ward's care team through the clinician API, in
proportions of a shift: the panel and a patient's 24-hour timeline most, the alert inbox
often, acknowledging an open alert now and then.

Run by ``loadtests/run.py`` (``make loadtest``), which registers the devices and writes the
fleet file named by ``RPMSTORE_LOADTEST_FLEET``.
"""

from __future__ import annotations

import itertools
import json
import os
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
from locust import FastHttpUser, User, constant_throughput, events, task
from paho.mqtt.enums import CallbackAPIVersion

from ingest.mqtt import shutdown_client
from loadtests.fleet import Fleet
from rpmstore.simulate_ward import SimDevice, TrafficPlan

HTTP_NAME = "POST /v1/readings"
MQTT_NAME = "publish rpm/v1/devices/+/readings"
PUBACK_TIMEOUT_S = 30.0
_FLEET_PATH = Path(os.environ.get("RPMSTORE_LOADTEST_FLEET", "reports/loadtest/fleet.pickle"))
_RATE = float(os.environ.get("RPMSTORE_LOADTEST_RATE", "2.0"))


class _Devices:
    """Hands each new user a device of its transport, never one another user has."""

    fleet: ClassVar[Fleet | None] = None
    _next: ClassVar[dict[str, itertools.count[int]]] = {
        "http": itertools.count(),
        "mqtt": itertools.count(),
    }
    # Readings acknowledged to devices (HTTP 200, PUBACK), and readings put on the wire at all
    # (a request or message cut off when the run stops may still be stored).
    sent_readings: ClassVar[dict[str, int]] = {
        "http": 0,
        "mqtt": 0,
        "http_attempted": 0,
        "mqtt_attempted": 0,
    }
    # Wall-clock (epoch) seconds: every user running, and the run time over.
    window: ClassVar[dict[str, float]] = {}

    @classmethod
    def take(cls, transport: str) -> tuple[SimDevice, TrafficPlan]:
        fleet = cls.fleet
        assert fleet is not None, "the fleet is loaded in the init event"
        devices = fleet.http_devices if transport == "http" else fleet.mqtt_devices
        number = next(cls._next[transport])
        if number >= len(devices):
            raise RuntimeError(f"more {transport} users than registered {transport} devices")
        device = devices[number]
        # A seed per device, the same in every run (str hashes differ between processes).
        return device, fleet.plan_for(device, seed=2 * number + (transport == "mqtt"))


@events.init.add_listener  # type: ignore[untyped-decorator]  # locust: untyped
def _load_fleet(**_kwargs: Any) -> None:
    _Devices.fleet = Fleet.load(_FLEET_PATH)


@events.spawning_complete.add_listener  # type: ignore[untyped-decorator]  # locust: untyped
def _all_running(**_kwargs: Any) -> None:
    _Devices.window["spawned_at"] = time.time()


@events.test_stopping.add_listener  # type: ignore[untyped-decorator]  # locust: untyped
def _run_time_over(**_kwargs: Any) -> None:
    _Devices.window["stopping_at"] = time.time()


@events.quitting.add_listener  # type: ignore[untyped-decorator]  # locust: untyped
def _write_sent(**_kwargs: Any) -> None:
    """What was sent (in stored-row units) and when, for the runner to check against the
    database once every user has stopped."""
    out = os.environ.get("RPMSTORE_LOADTEST_SENT")
    if out:
        Path(out).write_text(json.dumps({**_Devices.sent_readings, **_Devices.window}))


class DeviceOverHttp(FastHttpUser):
    fixed_count = int(os.environ.get("RPMSTORE_LOADTEST_HTTP_DEVICES", "1"))
    wait_time = constant_throughput(_RATE)

    def on_start(self) -> None:
        self.device, self.plan = _Devices.take("http")
        self.headers = {
            "Authorization": f"Bearer {self.device.token}",
            "Content-Type": "application/json",
        }

    @task
    def post_readings(self) -> None:
        payload = self.plan.next_payload(datetime.now(UTC))
        _Devices.sent_readings["http_attempted"] += payload.readings
        with self.client.post(
            "/v1/readings",
            data=payload.body,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=self.headers,
            name=HTTP_NAME,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            body = response.json()
            if body["rejected"]:  # the plan sends only valid readings
                response.failure(f"rejected: {body['rejected'][0]['reason']}")
                return
            _Devices.sent_readings["http"] += payload.readings


class DeviceOverMqtt(User):
    """A device on the broker: QoS 1 publish, one message in flight, PUBACK latency reported."""

    fixed_count = int(os.environ.get("RPMSTORE_LOADTEST_MQTT_DEVICES", "1"))
    wait_time = constant_throughput(_RATE)

    def on_start(self) -> None:
        self.device, self.plan = _Devices.take("mqtt")
        fleet = _Devices.fleet
        assert fleet is not None
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"loadtest-{self.device.device_id}",
            protocol=mqtt.MQTTv5,
        )
        if fleet.mqtt_tls:  # as real devices would, with the broker's certificate verified
            self.client.tls_set_context(ssl.create_default_context(cafile=fleet.mqtt_cafile))
        # Devices log in as themselves (rpmstore broker sync installed their accounts).
        self.client.username_pw_set(str(self.device.device_id), self.device.token)
        self.client.on_connect = lambda *_args: self.connected.set()
        started = time.perf_counter()
        self.client.connect(fleet.mqtt_host, fleet.mqtt_port)
        self.client.loop_start()
        error = None if self.connected.wait(30) else TimeoutError("no CONNACK within 30 s")
        self.environment.events.request.fire(
            request_type="MQTT",
            name="connect",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def on_stop(self) -> None:
        shutdown_client(self.client)

    @task
    def publish_readings(self) -> None:
        payload = self.plan.next_payload(datetime.now(UTC))
        _Devices.sent_readings["mqtt_attempted"] += payload.readings
        started = time.perf_counter()
        error: Exception | None = None
        try:
            info = self.client.publish(self.device.topic, payload.body, qos=1)
            info.wait_for_publish(PUBACK_TIMEOUT_S)
            if not info.is_published():
                error = TimeoutError(f"no PUBACK within {PUBACK_TIMEOUT_S:.0f} s")
        except (ValueError, RuntimeError) as exc:  # paho: queue full / not connected
            error = exc
        self.environment.events.request.fire(
            request_type="MQTT",
            name=MQTT_NAME,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(payload.body),
            exception=error,
            context={},
        )
        if error is None:
            _Devices.sent_readings["mqtt"] += payload.readings


PANEL_NAME = "GET /v1/patients"
TIMELINE_NAME = "GET /v1/patients/{id}/vitals"
INBOX_NAME = "GET /v1/alerts"
ACK_NAME = "POST /v1/alerts/{id}/ack"


class Clinician(FastHttpUser):
    """A clinician of the load-test ward's care team (token made by the runner)."""

    fixed_count = int(os.environ.get("RPMSTORE_LOADTEST_CLINICIANS", "0"))
    wait_time = constant_throughput(1.0)

    def on_start(self) -> None:
        fleet = _Devices.fleet
        assert fleet is not None, "the fleet is loaded in the init event"
        self.patients = [str(p.patient_id) for p in fleet.ward.patients]
        self.turn = itertools.count()
        token = os.environ["RPMSTORE_LOADTEST_CLINICIAN_TOKEN"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def _patient(self) -> str:
        return self.patients[next(self.turn) % len(self.patients)]

    @task(4)
    def panel(self) -> None:
        self.client.get("/v1/patients", headers=self.headers, name=PANEL_NAME)

    @task(4)
    def timeline(self) -> None:
        end = datetime.now(UTC)
        params = {
            "metric": "spo2",
            "start": (end - timedelta(hours=24)).isoformat(),
            "end": end.isoformat(),
            "resolution": "auto",
        }
        self.client.get(
            f"/v1/patients/{self._patient()}/vitals",
            params=params,
            headers=self.headers,
            name=TIMELINE_NAME,
        )

    @task(2)
    def inbox(self) -> None:
        self.client.get("/v1/alerts", headers=self.headers, name=INBOX_NAME)

    @task(1)
    def acknowledge(self) -> None:
        response = self.client.get(
            "/v1/alerts",
            params={"status": "open", "limit": 1},
            headers=self.headers,
            name=INBOX_NAME,
        )
        items = response.json()["items"] if response.status_code == 200 else []
        if items:
            # Another clinician may have acknowledged it meanwhile: 409 is then the right answer.
            with self.client.post(
                f"/v1/alerts/{items[0]['alert_id']}/ack",
                json={"note": "load test"},
                headers=self.headers,
                name=ACK_NAME,
                catch_response=True,
            ) as ack:
                if ack.status_code in (200, 409):
                    ack.success()
