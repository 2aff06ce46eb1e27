"""``python -m loadtests.broker_loss_window``: what a Mosquitto killed with SIGKILL loses.

Mosquitto acknowledges a QoS 1 message (PUBACK) once the message is in its memory, and writes
memory to its persistence file every ``autosave_interval`` seconds (``ingest/broker/limits.conf``)
and on a clean shutdown. A broker killed outright therefore loses the messages it acknowledged
after its last save that it had not yet handed on, acknowledged, to a subscriber.

The worst case is measured: the ingestor's persistent session is offline (a backlog waits in
the broker), a device publishes at a steady rate, the broker is SIGKILLed at a random moment,
restarted, and the session reconnects to collect what survived. The window is the time between
the oldest lost message's PUBACK and the kill. Runs on the embedded stack's Debian root (root,
Debian-family host); results go to ``reports/loadtest/broker-loss-window.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt import shutdown_client
from rpmstore.localstack.debian_root import ensure_root
from rpmstore.localstack.mosquitto import GATEWAY_USER, INGEST_USER, MosquittoInstance
from rpmstore.localstack.postgres import new_password
from rpmstore.settings import Settings
from rpmstore.ward_demo import free_port

OUT = Path(__file__).resolve().parents[1] / "reports" / "loadtest" / "broker-loss-window.json"
TOPIC = "rpm/v1/devices/loss-window/readings"
SUBSCRIPTION = "rpm/v1/devices/+/readings"


@dataclass
class _Session:
    """A persistent subscriber session (like the ingestor's), collecting message numbers."""

    port: int
    password: str
    client_id: str
    received: set[int] = field(default_factory=set)
    last_message_at: float = 0.0

    def connect(self, *, subscribe: bool) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(INGEST_USER, self.password)
        connected = threading.Event()
        client.on_connect = lambda *_args: connected.set()
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
        properties.SessionExpiryInterval = 3600
        client.connect("127.0.0.1", self.port, clean_start=False, properties=properties)
        client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("the subscriber could not connect")
        if subscribe:
            client.subscribe(SUBSCRIPTION, qos=1)
            time.sleep(0.5)
        return client

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received.add(int(message.payload))
        self.last_message_at = time.monotonic()


def trial(
    instance: MosquittoInstance, passwords: dict[str, str], rate: float, seconds: float
) -> dict[str, float]:
    session = _Session(instance.port, passwords[INGEST_USER], f"loss-{os.urandom(3).hex()}")
    shutdown_client(session.connect(subscribe=True))  # session and subscription, then offline

    acked_at: dict[int, float] = {}
    lock = threading.Lock()
    publisher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="loss-device", protocol=mqtt.MQTTv5
    )
    publisher.username_pw_set(GATEWAY_USER, passwords[GATEWAY_USER])
    numbers: dict[int, int] = {}  # mid -> message number

    def on_publish(*args: Any) -> None:
        with lock:
            acked_at[numbers[args[2]]] = time.monotonic()

    publisher.on_publish = on_publish
    publisher.max_inflight_messages_set(100)
    publisher.connect("127.0.0.1", instance.port)
    publisher.loop_start()
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while n < rate * elapsed:
            with lock:
                info = publisher.publish(TOPIC, str(n).encode(), qos=1)
                numbers[info.mid] = n
            n += 1
        time.sleep(0.002)
    pid = instance.pid()
    assert pid is not None
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    shutdown_client(publisher)
    while instance.is_running():
        time.sleep(0.02)
    instance.start()
    client = session.connect(subscribe=False)
    session.last_message_at = time.monotonic()
    while time.monotonic() - session.last_message_at < 2.0:  # until the backlog stops coming
        time.sleep(0.1)
    shutdown_client(client)
    with lock:
        acked = {k: v for k, v in acked_at.items() if v <= killed_at}
    lost = sorted(set(acked) - session.received)
    window = killed_at - min(acked[k] for k in lost) if lost else 0.0
    return {
        "published_acked": len(acked),
        "lost": len(lost),
        "window_s": round(window, 2),
        "lost_share": round(len(lost) / len(acked), 4) if acked else 0.0,
    }


def autosave_interval_s() -> int:
    """The shipped policy's setting (ingest/broker/limits.conf)."""
    policy = (resources.files("ingest") / "broker" / "limits.conf").read_text()
    match = re.search(r"^autosave_interval\s+(\d+)", policy, re.MULTILINE)
    return int(match[1]) if match else 1800  # Mosquitto's default


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.broker_loss_window")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    root = ensure_root(Settings().home)
    results = []
    for number in range(args.trials):
        passwords = {INGEST_USER: new_password(), GATEWAY_USER: new_password()}
        instance = MosquittoInstance(root, f"loss-window-{os.getpid()}-{number}", free_port())
        instance.configure(passwords)
        instance.start()
        try:
            # Kill at a random phase of the autosave cycle: 8 to 13 s after the broker started.
            seconds = float(rng.uniform(8.0, 13.0))
            result = trial(instance, passwords, args.rate, seconds)
        finally:
            instance.destroy()
        results.append({"run_s": round(seconds, 2), **result})
        sys.stdout.write(f"trial {number + 1}: {json.dumps(results[-1])}\n")
    summary = {
        "autosave_interval_s": autosave_interval_s(),
        "rate_per_s": args.rate,
        "trials": results,
        "max_window_s": max(r["window_s"] for r in results),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(f"longest window: {summary['max_window_s']} s; written to {OUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
