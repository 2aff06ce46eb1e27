"""``rpmstore demo``: a simulated ward sending vitals through the real ingest processes.

Starts ``rpmstore ingest mqtt`` and ``rpmstore serve`` as child processes against the running
stack, runs a short simulation over MQTT and another over HTTP, prints what was sent, stored,
recognised as duplicates and quarantined, and one patient's latest readings as read back from
TimescaleDB; then stops the children with SIGTERM. ``rpmstore db up`` and ``rpmstore migrate
up`` must have run (``make demo`` does both first).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx2
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt import shutdown_client
from ingest.transport import parse_broker_url
from rpmstore.clinician_demo import TokenSigner, print_clinician_view
from rpmstore.localstack.model import StackUrls
from rpmstore.simulate import (
    Endpoints,
    SimulationConfig,
    SimulationReport,
    Via,
    format_report,
    latest_readings,
    run_simulation,
)
from schema.edition import detect_edition

log = logging.getLogger(__name__)

_START_TIMEOUT_S: Final = 60.0
_STOP_TIMEOUT_S: Final = 30.0
# The demo's ingestor names its own persistent MQTT session, stable across demo runs, so it
# neither takes over a real ingestor's session nor leaves a new stale one behind each run.
DEMO_INGEST_CLIENT_ID: Final = "rpmstore-demo-ingest"


class DemoError(RuntimeError):
    """A child process did not start or get ready."""


@dataclass(frozen=True)
class DemoOptions:
    patients: int = 5
    rate: float = 200.0
    seconds: float = 5.0
    seed: int | None = None


@dataclass
class Child:
    """One ``rpmstore`` subcommand running as a child process, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log_text().splitlines()[-20:])
            raise DemoError(
                f"'rpmstore {self.name}' exited with status {self.process.returncode}:\n{tail}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("'rpmstore %s' ignored SIGTERM; killing it", self.name)
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    """A loopback port nobody listens on now (the API binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def child(args: list[str], *, env: dict[str, str], log_dir: Path) -> Iterator[Child]:
    """Run ``rpmstore <args>`` with this very interpreter; SIGTERM it on the way out."""
    name = " ".join(args[:2])
    log_path = log_dir / f"{'-'.join(args[:2])}.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = Child(name, process, log_path)
    try:
        yield running
    finally:
        running.stop()


def child_env(urls: StackUrls) -> dict[str, str]:
    """The children's environment: ours (PATH, RPMSTORE_*, ...) plus the servers to use.

    Passing the URLs explicitly makes the children use exactly the servers this process
    resolved, whichever way it resolved them.
    """
    env = {
        **os.environ,
        "DATABASE_URL": urls.database_url,
        "MQTT_URL": urls.mqtt_url,
        "RPMSTORE_MQTT_CLIENT_ID": DEMO_INGEST_CLIENT_ID,
    }
    if urls.api_database_url:
        env["API_DATABASE_URL"] = urls.api_database_url
    # The API verifies the demo's clinician tokens with the secret they were signed with.
    if urls.jwt_secret:
        env["RPMSTORE_JWT_SECRET"] = urls.jwt_secret
    return env


def wait_ready(ingestor: Child, api: Child, api_url: str) -> None:
    """Until the ingestor is connected to the broker and the API answers /readyz (bounded)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    ingestor_ready = api_ready = False
    with httpx2.Client(base_url=api_url, timeout=2.0, trust_env=False) as client:
        while not (ingestor_ready and api_ready):
            ingestor.check_alive()
            api.check_alive()
            ingestor_ready = ingestor_ready or "MQTT connected" in ingestor.log_text()
            if not api_ready:
                with suppress(httpx2.TransportError):  # not listening yet
                    api_ready = client.get("/readyz").status_code == 200
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the ingestor or the API was not ready within {_START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.1)


def forget_session(mqtt_url: str, client_id: str) -> None:
    """Delete a stopped ingestor's persistent session at the broker.

    An ingestor's session outlives it (7 days) on purpose, and Mosquitto keeps handing an
    offline member of a shared subscription its round-robin share of the messages. Left behind
    by the demo, that session would silently hold half of every later stream until the next
    demo. Connecting with its client id, a clean start and no session expiry ends it.
    """
    # The URL is the ingestor's own, already accepted by it: no second plaintext policy here.
    endpoint = parse_broker_url(mqtt_url, allow_plaintext=True)
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    endpoint.apply(client)
    client.on_connect = lambda *_args: connected.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
    properties.SessionExpiryInterval = 0
    try:
        client.connect(
            endpoint.host,
            endpoint.port,
            clean_start=True,
            properties=properties,
        )
        client.loop_start()
        if not connected.wait(_START_TIMEOUT_S):
            log.warning("could not end the demo ingestor's MQTT session %s", client_id)
    except OSError as exc:
        log.warning("could not end the demo ingestor's MQTT session %s: %s", client_id, exc)
    finally:
        shutdown_client(client)


def run_ward_demo(urls: StackUrls, options: DemoOptions, sign: TokenSigner | None = None) -> int:
    """Print the ward demo; 0 when every reading sent is accounted for in the database."""
    if urls.mqtt_gateway_url is None:
        raise DemoError(
            "the demo publishes as the broker's gateway account, which only the local stack "
            "knows ('rpmstore db up'); with other servers use 'rpmstore simulate --mqtt-url'"
        )
    with psycopg.connect(urls.database_url) as conn:
        edition = detect_edition(conn)
    print(
        f"PostgreSQL {edition.postgres_version}, TimescaleDB {edition.timescaledb_version} "
        f"({edition.license} edition)"
    )
    api_url = f"http://127.0.0.1:{free_port()}"
    env = child_env(urls)
    with tempfile.TemporaryDirectory(prefix="rpmstore-demo-") as folder, ExitStack() as stack:
        log_dir = Path(folder)
        # Registered first, so it runs last: after the ingestor has stopped.
        stack.callback(forget_session, urls.mqtt_url, DEMO_INGEST_CLIENT_ID)
        ingestor = stack.enter_context(child(["ingest", "mqtt"], env=env, log_dir=log_dir))
        port = api_url.rsplit(":", 1)[1]
        api = stack.enter_context(child(["serve", "--port", port], env=env, log_dir=log_dir))
        wait_ready(ingestor, api, api_url)
        print(
            f"started 'rpmstore ingest mqtt' (pid {ingestor.process.pid}) and "
            f"'rpmstore serve' on {api_url} (pid {api.process.pid})"
        )
        endpoints = Endpoints(urls.database_url, api_url=api_url, mqtt_url=urls.mqtt_gateway_url)
        vias: tuple[Via, ...] = ("mqtt", "http")
        reports = [_simulate(options, endpoints, via) for via in vias]
        _print_latest(urls.database_url, reports[-1])
        if sign is not None:
            patients = [p for report in reports for p in report.ward.patients]
            print_clinician_view(api_url, patients, sign)
    print("stopped both processes (SIGTERM)")
    return 0 if all(r.accounted for r in reports) else 1


def _simulate(options: DemoOptions, endpoints: Endpoints, via: Via) -> SimulationReport:
    config = SimulationConfig(
        patients=options.patients,
        rate=options.rate,
        seconds=options.seconds,
        via=via,
        seed=options.seed,
    )
    report = run_simulation(config, endpoints)
    print()
    print("\n".join(format_report(report)))
    return report


def _print_latest(database_url: str, report: SimulationReport) -> None:
    """The latest readings of the first patient (who has every kind of device, so every unit
    conversion shows) and, when another patient desaturated, theirs too."""
    shown = {0}
    shown.update(e.patient for e in report.episodes if e.kind == "desaturation")
    with psycopg.connect(database_url) as conn:
        for index in sorted(shown):
            patient = report.ward.patients[index]
            rows = latest_readings(conn, patient.patient_id)
            episodes = [e.kind for e in report.episodes if e.patient == index]
            during = f" (during: {', '.join(episodes)})" if episodes else ""
            print()
            print(
                f"latest readings of {patient.mrn}{during}, "
                "read back from the rpm.readings hypertable:"
            )
            print(f"  {'measured at (UTC)':<23} {'metric':<17} {'value':>7} unit")
            for row in rows:
                print(
                    f"  {_utc_ms(row.measured_at)}  {row.metric:<17} {row.value:>7.1f} {row.unit}"
                )


def _utc_ms(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds").removesuffix("+00:00")
