"""Fault tests: a simulated ward keeps sending while servers are restarted or killed.

Each test gets a fresh database with a registered ward (``rpmstore.simulate_ward``), its own
Mosquitto (so restarting it disturbs no other test), the MQTT ingestor and the API as real
``rpmstore`` subprocesses, and a publisher that logs every acknowledgement it gets. After the
fault, :func:`assert_exactly_once` checks what the database holds against what was sent and
acknowledged, :meth:`FaultWard.assert_alerts_exact` that no alert was lost or doubled (the
ward includes abnormal episodes, ``tests/faults/episodes.py``), and
:func:`assert_amcheck_clean` runs ``pg_amcheck --heapallindexed``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.conninfo import conninfo_to_dict

from ingest.mqtt import shutdown_client
from rpmstore.localstack.debian_root import PG_BIN, DebianRoot
from rpmstore.localstack.mosquitto import GATEWAY_USER, INGEST_USER, MosquittoInstance
from rpmstore.localstack.postgres import new_password
from rpmstore.localstack.stack import mqtt_url
from rpmstore.simulate_ward import PlannedPayload, Shares, TrafficPlan, Ward, register_ward
from tests.conftest import PgServer, free_port
from tests.faults.alerts import assert_alerts_exact
from tests.faults.episodes import (
    Episode,
    interleave,
    plan_episodes,
    reading_keys,
    register_episode_patients,
)

__all__ = ["assert_alerts_exact", "reading_keys"]

WAIT_S = 90.0
# No bad payloads and no deliberate re-sends: every reading the ward sends must end up stored
# exactly once, so "sent = stored" is exact. Late readings stay (they take another path).
SHARES = Shares(retry=0.0, late=0.05, bad=0.0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Bounded wait for an outcome (the bound only stops a hung test; nothing is timed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class RpmstoreProcess:
    """One ``rpmstore`` subcommand as a real child process, restartable, killable."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready_text: bytes | None = None  # a log line that says it is ready
    process: subprocess.Popen[bytes] | None = None

    def log_count(self, text: bytes) -> int:
        return self.log_path.read_bytes().count(text) if self.log_path.exists() else 0

    def start(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rpmstore.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        if self.ready_text is not None:
            ready = self.ready_text
            wait_until(
                lambda: self._alive() and ready in self.log_path.read_bytes()[offset:],
                f"'rpmstore {' '.join(self.args)}' to be ready",
            )

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"rpmstore {' '.join(self.args)} exited:\n{tail}")
        return True

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class WardPublisher:
    """The ward's MQTT gateway: QoS 1, and a log of every PUBACK it gets.

    paho re-sends whatever is unacknowledged after a reconnect (and queues what is published
    while disconnected), which is the senders' retry after a broker restart.
    """

    broker_port: int
    password: str
    sent: list[tuple[PlannedPayload, mqtt.MQTTMessageInfo]] = field(default_factory=list)
    ack_log: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, mid)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ward-gw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(GATEWAY_USER, self.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)  # unbounded: nothing is dropped while offline
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", self.broker_port)
        self.client.loop_start()

    def _on_publish(self, *args: object) -> None:
        mid = args[2]
        assert isinstance(mid, int)
        with self._lock:
            self.ack_log.append((time.monotonic(), mid))

    def send(self, payload: PlannedPayload) -> None:
        info = self.client.publish(payload.device.topic, payload.body, qos=1)
        assert info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN), info.rc
        with self._lock:
            self.sent.append((payload, info))

    def acked(self) -> list[PlannedPayload]:
        """Payloads the broker has acknowledged (a PUBACK in the log), in sending order.

        By message id, from the log: paho's ``is_published`` raises for a message that was
        first queued while disconnected, even once it has been sent and acknowledged. Ids are
        unique here because a test sends far fewer than 65,535 messages.
        """
        with self._lock:
            acked_mids = {mid for _, mid in self.ack_log}
            return [payload for payload, info in self.sent if info.mid in acked_mids]

    def payloads(self) -> list[PlannedPayload]:
        with self._lock:
            return [payload for payload, _ in self.sent]

    def acks_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for at, _ in self.ack_log if at >= since)

    def wait_all_acked(self) -> None:
        wait_until(lambda: len(self.acked()) == len(self.sent), "a PUBACK for every message")

    def close(self) -> None:
        shutdown_client(self.client)


@dataclass
class FaultWard:
    """A registered ward on a fresh database, and the means to send its traffic."""

    db_url: str
    admin_db_url: str
    api_db_url: str
    ward: Ward
    plan: TrafficPlan
    tmp_path: Path
    broker: MosquittoInstance
    broker_passwords: dict[str, str]
    # Abnormal episodes of two more patients (tests/faults/episodes.py), sent among the ward's
    # first payloads; every alert check expects their alerts.
    episodes: list[Episode] = field(default_factory=list)
    processes: list[RpmstoreProcess] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)  # the ward's senders
    _episodes_sent: bool = False

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "API_DATABASE_URL": self.api_db_url,
            "MQTT_URL": mqtt_url(INGEST_USER, self.broker_passwords[INGEST_USER], self.broker.port),
            "RPMSTORE_MQTT_GROUP": f"g{uuid.uuid4().hex[:8]}",
            "RPMSTORE_MQTT_CLIENT_ID": f"faults-{uuid.uuid4().hex[:8]}",
            "RPMSTORE_LOG_FORMAT": "json",
            # Nothing of a developer's own local stack (~/.cache/rpmstore) is read or touched.
            "RPMSTORE_HOME": str(self.tmp_path / "rpmstore-home"),
            **extra,
        }

    def ingestor(
        self, *, broker_port: int | None = None, group: str | None = None
    ) -> RpmstoreProcess:
        """``rpmstore ingest mqtt`` (not started); ``broker_port`` to connect through a proxy;
        ``group`` "" for a plain (not shared) subscription."""
        port = broker_port or self.broker.port
        extra = {} if group is None else {"RPMSTORE_MQTT_GROUP": group}
        env = self.env(
            MQTT_URL=mqtt_url(INGEST_USER, self.broker_passwords[INGEST_USER], port), **extra
        )
        process = RpmstoreProcess(
            ["ingest", "mqtt"], env, self.tmp_path / "ingestor.log", b"MQTT connected"
        )
        self.processes.append(process)
        return process

    def api(self, port: int) -> RpmstoreProcess:
        """``rpmstore serve`` on ``port`` (not started; ready once it logs that it listens:
        uvicorn logs "startup complete" before it binds)."""
        process = RpmstoreProcess(
            ["serve", "--port", str(port)],
            self.env(),
            self.tmp_path / "api.log",
            b"Uvicorn running on",
        )
        self.processes.append(process)
        return process

    def start_api(self, attempts: int = 3) -> tuple[RpmstoreProcess, int]:
        """``rpmstore serve`` started on a free port, and the port. ``free_port`` only finds a
        port free at that moment: something else on the machine (an outgoing connection's
        ephemeral port, another test run) can take it before the API binds, so a bind failure
        is retried on another port."""
        for attempt in range(1, attempts + 1):
            port = free_port()
            process = self.api(port)
            in_use = process.log_count(b"address already in use")
            try:
                process.start()
            except AssertionError:
                self.processes.remove(process)
                if attempt == attempts or process.log_count(b"address already in use") == in_use:
                    raise
                continue
            return process, port
        raise AssertionError("unreachable")

    def publisher(self, *, broker_port: int | None = None) -> WardPublisher:
        return WardPublisher(broker_port or self.broker.port, self.broker_passwords[GATEWAY_USER])

    def payloads(self, count: int) -> list[PlannedPayload]:
        """The next ``count`` payloads of the ward, measured now (planned up front, so that
        sending them costs the sending thread nothing but the send); the first call also
        spreads the episodes' payloads among them."""
        payloads = [self.plan.next_payload(datetime.now(UTC)) for _ in range(count)]
        if self._episodes_sent:
            return payloads
        self._episodes_sent = True
        return interleave(payloads, self.episodes)

    def stop_processes(self) -> None:
        """SIGTERM every process still running: each drains its alert evaluations before it
        exits, so what the database holds afterwards is final."""
        for process in self.processes:
            process.stop()

    def assert_alerts_exact(self, *, all_episodes_stored: bool = True) -> None:
        """Stop the processes, then :func:`tests.faults.alerts.assert_alerts_exact`."""
        self.stop_processes()
        assert_alerts_exact(self.db_url, self.episodes, all_episodes_stored=all_episodes_stored)

    def stored_rows(self) -> int:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute("SELECT count(*) FROM rpm.readings").fetchone()
        assert row is not None
        return int(row[0])

    def duplicates_recognised(self) -> int:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(duplicate_count), 0) FROM rpm.ingest_batches"
            ).fetchone()
        assert row is not None
        return int(row[0])


def send_in_background(
    payloads: list[PlannedPayload], send: Callable[[PlannedPayload], None], rate: float
) -> threading.Thread:
    """Send ``payloads`` at about ``rate`` per second from a thread (the ward keeps sending
    while the test injects its fault)."""

    def run() -> None:
        start = time.monotonic()
        for n, payload in enumerate(payloads):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(payload)

    thread = threading.Thread(target=run, name="ward", daemon=True)
    thread.start()
    return thread


def assert_exactly_once(
    ward: FaultWard, sent: list[PlannedPayload], acked: list[PlannedPayload]
) -> None:
    """Every acknowledged reading is stored; sent = stored; nothing stored twice; nothing
    quarantined; and every stored row is accounted for by an ingest batch."""
    expected = reading_keys(sent)
    assert set(expected.values()) == {1}, "the ward never sends a natural key twice"
    with psycopg.connect(ward.db_url) as conn:
        stored: Counter[tuple[str, str]] = Counter(
            {
                (str(device), str(client_id)): int(count)
                for device, client_id, count in conn.execute(
                    "SELECT device_id, client_reading_id, count(*) FROM rpm.readings "
                    "GROUP BY device_id, client_reading_id"
                )
            }
        )
        quarantined = conn.execute("SELECT count(*) FROM rpm.ingest_quarantine").fetchone()
        batch_rows = conn.execute(
            "SELECT coalesce(sum(row_count), 0) FROM rpm.ingest_batches"
        ).fetchone()
    missing_acked = [key for key in reading_keys(acked) if key not in stored]
    assert missing_acked == [], f"{len(missing_acked)} acknowledged readings are not stored"
    assert sorted(stored) == sorted(expected), "readings sent = readings stored"
    assert [key for key, count in stored.items() if count > 1] == [], "duplicates stored"
    assert quarantined == (0,)
    assert batch_rows == (sum(stored.values()),), "every row has its ingest batch"


def assert_amcheck_clean(root: DebianRoot, admin_db_url: str) -> None:
    """``pg_amcheck --heapallindexed`` over the whole database (every chunk and index)."""
    params = conninfo_to_dict(admin_db_url)
    with psycopg.connect(admin_db_url, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    result = root.run(
        root.account("postgres"),
        [
            f"PGPASSWORD={params['password']}",  # env(1) assignment: never on a host command line
            f"{PG_BIN}/pg_amcheck",
            "--heapallindexed",
            "--host",
            str(params.get("host", "127.0.0.1")),
            "--port",
            str(params.get("port", 5432)),
            "--username",
            str(params["user"]),
            "--no-password",
            str(params["dbname"]),
        ],
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"pg_amcheck: {result.stdout}{result.stderr}"
    assert result.stdout.strip() == "", result.stdout


@pytest.fixture
def fault_broker(
    debian_root: DebianRoot, tmp_path: Path
) -> Iterator[tuple[MosquittoInstance, dict[str, str]]]:
    """A Mosquitto of this test's own (shipped policy), so restarting it disturbs no other."""
    passwords = {INGEST_USER: new_password(), GATEWAY_USER: new_password()}
    instance = MosquittoInstance(
        debian_root, f"faults-{os.getpid()}-{secrets.token_hex(3)}", free_port()
    )
    instance.configure(passwords)
    instance.start()
    try:
        yield instance, passwords
    finally:
        instance.stop()
        if instance.log_file.exists():  # kept next to the processes' logs for a failed test
            shutil.copy(instance.log_file, tmp_path / "mosquitto.log")
        instance.destroy()


@pytest.fixture
def fault_ward(
    db_url: str,
    pg_server: PgServer,
    fault_broker: tuple[MosquittoInstance, dict[str, str]],
    tmp_path: Path,
) -> Iterator[FaultWard]:
    rng = np.random.default_rng(6)
    now = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        ward = register_ward(conn, patients=4, rng=rng, now=now)
        episode_patients = register_episode_patients(conn, run_id=ward.run_id, now=now)
    plan = TrafficPlan(ward, rng, shares=SHARES, episodes=())
    database = str(conninfo_to_dict(db_url)["dbname"])
    broker, passwords = fault_broker
    fault = FaultWard(
        db_url,
        pg_server.url(database, admin=True),
        pg_server.url(database, api=True),
        ward,
        plan,
        tmp_path,
        broker,
        passwords,
        episodes=plan_episodes(episode_patients, now),
    )
    try:
        yield fault
    finally:
        for thread in fault.threads:
            thread.join(timeout=WAIT_S)
        for process in fault.processes:
            process.stop()
