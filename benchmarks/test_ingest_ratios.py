"""Ingest throughput as ratios against raw binary COPY, all measured in one run.

The same readings (same devices, patients, times and values) are written four ways, each into
a fresh clone of the migrated database (same table, same indexes, empty at the start):

1. raw COPY: binary COPY straight into rpm.readings, one transaction per 5,000 rows, two
   streams at once: the baseline, nothing validated, nothing deduplicated. It uses the fastest
   encoder there is here, the numpy one the pipeline uses (``ingest.copy_binary``), from rows
   prepared as columns in advance: the ratios measure the pipeline's overhead, not an encoder;
2. the idempotent path: the group committer (savepointed COPY, batch lineage, outcome
   classification; the staging merge only when a batch meets stored keys), fed validated
   readings as columns: its ratio is the dedup tax;
3. HTTP end to end: JSON payloads posted to ``rpmstore serve --role ingest`` (the device
   ingest service) with device tokens, decoded, validated and group-committed; timed until
   the last 200 (answered after COMMIT);
4. MQTT end to end: the same payloads published QoS 1 as the gateway account to a real
   Mosquitto, consumed by ``rpmstore ingest mqtt``; timed until every row is in the table.

Ratios are what to compare between machines: rows/s of a path / rows/s of raw COPY measured
minutes apart on the same machine. Results go to reports/bench-ingest.json and stdout.

CPU seconds are recorded per path too (Linux /proc): PostgreSQL (postmaster, its live and
its exited children), the server process (API or MQTT ingestor) and this process (the load
generator; for the first two paths the client itself). On a machine that other work keeps
busy the wall-clock ratios swing from run to run; the CPU a path costs per row does much less,
and on saturated cores the ratio tends to CPU(raw COPY) / CPU(path).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx2
import psycopg
import pytest

from benchmarks.raw_http import Connection, post_request
from ingest.committer import READING_COLUMNS, GroupCommitter, IngestRequest
from ingest.mqtt import shutdown_client
from ingest.store import ReadingColumns, ValidatedReading
from rpmstore.localstack.mosquitto import GATEWAY_USER, INGEST_USER
from schema.registry import assign_device, register_device, register_patient
from tests.conftest import Broker, DatabaseFactory, free_port

pytestmark = pytest.mark.benchmark

ROWS = int(os.environ.get("RPMSTORE_BENCH_ROWS", "200000"))
READINGS_PER_PAYLOAD = int(os.environ.get("RPMSTORE_BENCH_PAYLOAD", "500"))
DEVICES = 100
API_WORKERS = int(os.environ.get("RPMSTORE_BENCH_API_WORKERS", "1"))
# Requests (or MQTT messages) in flight at once: a ward of devices posting concurrently. With
# fewer than two batches' worth of rows in flight, the committer's second COPY stream has
# nothing to do while the first commits, and PostgreSQL idles half the time.
CONCURRENCY = int(os.environ.get("RPMSTORE_BENCH_CONCURRENCY", "32"))
COPY_CHUNK = 5000
COPY_STREAMS = 2  # = GroupCommitter's default worker count
REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench-ingest.json"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
HEART_RATE = 1


@dataclass(frozen=True)
class Device:
    device_id: uuid.UUID
    patient_id: uuid.UUID
    token: str


@dataclass(frozen=True)
class Dataset:
    devices: list[Device]
    # per device: (measured_at, value); one reading per second per device
    series: list[list[tuple[datetime, float]]]

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.series)

    def readings(self) -> Iterator[ValidatedReading]:
        received = datetime.now(UTC)
        for device, series in zip(self.devices, self.series, strict=True):
            for at, value in series:
                yield ValidatedReading(
                    at, device.device_id, device.patient_id, HEART_RATE, value, received
                )

    def payloads(self) -> Iterator[tuple[Device, bytes]]:
        for device, series in zip(self.devices, self.series, strict=True):
            for start in range(0, len(series), READINGS_PER_PAYLOAD):
                chunk = series[start : start + READINGS_PER_PAYLOAD]
                body = {
                    "device_id": str(device.device_id),
                    "readings": [
                        {
                            "metric": "heart_rate",
                            "value": value,
                            "unit": "/min",
                            "time": int(at.timestamp() * 1000),
                        }
                        for at, value in chunk
                    ],
                }
                yield device, json.dumps(body).encode()


def _stat_cpu_s(fields: list[str], *, reaped_children: bool = False) -> float:
    """utime + stime (and cutime + cstime) of a /proc/<pid>/stat line split after the name."""
    ticks = sum(int(f) for f in fields[11 : 15 if reaped_children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or not Linux
        return None
    return text.rpartition(")")[2].split()


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds of ``pid`` and of its children (``serve --workers N`` forks its workers)."""
    fields = _stat(pid)
    if fields is None:
        return None
    total = _stat_cpu_s(fields, reaped_children=True)
    for child in Path("/proc").iterdir():
        child_fields = _stat(child.name) if child.name.isdigit() else None
        if child_fields is not None and child_fields[1] == str(pid):
            total += _stat_cpu_s(child_fields)
    return total


def postgres_cpu_s(port: int) -> float | None:
    """CPU seconds of the PostgreSQL listening on ``port``: the postmaster, the backends it
    has reaped (cutime), and its live children (backends, background workers)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    postmaster = None
    pids = [p.name for p in proc.iterdir() if p.name.isdigit()]
    for pid in pids:
        try:
            argv = (proc / pid / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-D" in argv and b"-p" in argv and argv[argv.index(b"-p") + 1] == str(port).encode():
            postmaster = pid
    if postmaster is None:
        return None
    total = 0.0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            continue
        if pid == postmaster:
            total += _stat_cpu_s(fields, reaped_children=True)
        elif fields[1] == postmaster:
            total += _stat_cpu_s(fields)
    return total


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def register(conn: psycopg.Connection) -> list[Device]:
    devices = []
    for n in range(DEVICES):
        patient = register_patient(conn)
        device = register_device(
            conn, kind="wearable", manufacturer="Bench", model="HR", serial_number=f"B-{n}"
        )
        assign_device(
            conn, device_id=device.device_id, patient_id=patient, valid_from=T0 - timedelta(days=1)
        )
        devices.append(Device(device.device_id, patient, device.token))
    return devices


def dataset(devices: list[Device]) -> Dataset:
    per_device = ROWS // len(devices)
    series = [
        [(T0 + timedelta(seconds=s), float(60 + (s * 7 + d) % 40)) for s in range(per_device)]
        for d in range(len(devices))
    ]
    return Dataset(devices, series)


def stored_rows(conn: psycopg.Connection) -> int:
    """Readings stored so far, by the ingest batches' own count."""
    row = conn.execute("SELECT coalesce(sum(row_count), 0) FROM rpm.ingest_batches").fetchone()
    assert row is not None
    return int(row[0])


def count_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM rpm.readings").fetchone()
    assert row is not None
    return int(row[0])


async def raw_copy(url: str, records: ReadingColumns) -> float:
    chunks = iter(range(0, len(records), COPY_CHUNK))
    # As many COPY streams as the group committer has workers: the baseline gets the same
    # parallelism (a single stream would leave PostgreSQL idle while the client encodes).
    async with asyncpg.create_pool(url, min_size=COPY_STREAMS, max_size=COPY_STREAMS) as pool:

        async def stream() -> None:
            for start in chunks:
                chunk = records.rows(start, start + COPY_CHUNK)
                async with pool.acquire() as conn, conn.transaction():
                    await conn.copy_to_table(
                        "readings",
                        schema_name="rpm",
                        source=memoryview(chunk.copy_stream(batch_id=0)),
                        columns=READING_COLUMNS,
                        format="binary",
                    )

        started = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(COPY_STREAMS)))
        return time.perf_counter() - started


def requests_of(readings: ReadingColumns) -> list[IngestRequest]:
    return [
        IngestRequest(
            readings=readings.rows(i, i + READINGS_PER_PAYLOAD),
            reading_indexes=range(min(READINGS_PER_PAYLOAD, len(readings) - i)),
            quarantine=(),
            raw_payload=b"",
            received_at=time.time(),
        )
        for i in range(0, len(readings), READINGS_PER_PAYLOAD)
    ]


async def idempotent_commit(url: str, requests: list[IngestRequest]) -> float:
    async with asyncpg.create_pool(url, min_size=2, max_size=4) as pool:
        committer = GroupCommitter(pool, source="import", max_batch_rows=COPY_CHUNK)
        await committer.start()
        queue = iter(requests)
        started = time.perf_counter()

        async def client() -> None:
            for request in queue:
                await committer.submit(request)

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        await committer.stop()
    return elapsed


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log: Path

    def wait_for_log(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.log.read_text(errors="replace")[-2000:])
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def start_child(args: list[str], env: dict[str, str], log: Path) -> Child:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", *args],
            env={
                **os.environ,
                "RPMSTORE_LOG_FORMAT": "json",
                "RPMSTORE_LOG_LEVEL": "WARNING",
                # An instance name of its own: the children use the servers given in env and
                # must not read the state file of a developer's `rpmstore db up` stack.
                "RPMSTORE_INSTANCE": f"bench-{os.getpid()}",
                **env,
            },
            stdout=out,
            stderr=out,
        )
    return Child(process, log)


async def http_end_to_end(port: int, payloads: list[tuple[Device, bytes]]) -> float:
    """POST every payload, CONCURRENCY at a time on keep-alive connections; the requests are
    built before the clock starts, and the client is a lean one (``benchmarks.raw_http``) so
    that the load generator's CPU does not stand in for the server's on two shared cores."""
    requests = [
        post_request(
            "127.0.0.1", port, "/v1/readings", body, {"Authorization": f"Bearer {device.token}"}
        )
        for device, body in payloads
    ]
    queue = iter(requests)
    connections = [await Connection.open("127.0.0.1", port) for _ in range(CONCURRENCY)]
    started = time.perf_counter()

    async def sender(connection: Connection) -> None:
        for request in queue:
            response = await connection.send(request)
            assert response.status == 200, response.body[:500]

    try:
        await asyncio.gather(*(sender(c) for c in connections))
        return time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()


def mqtt_end_to_end(
    broker: Broker, url: str, payloads: list[tuple[Device, bytes]], rows: int
) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-gw", protocol=mqtt.MQTTv5)
    client.username_pw_set(GATEWAY_USER, broker.passwords[GATEWAY_USER])
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect_async("127.0.0.1", broker.instance.port)
    client.loop_start()
    try:
        started = time.perf_counter()
        for device, body in payloads:
            client.publish(f"rpm/v1/devices/{device.device_id}/readings", body, qos=1)
        deadline = time.monotonic() + 600
        # Progress from the batch rows (one per committed batch, with the readings it stored)
        # on one connection: counting rpm.readings, on a new connection each time, cost
        # PostgreSQL about half a CPU second per run, charged to the MQTT path.
        with psycopg.connect(url, autocommit=True) as conn:
            while stored_rows(conn) < rows:
                assert time.monotonic() < deadline, "MQTT pipeline did not store every row"
                time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        shutdown_client(client)


# Long on purpose: one scripted scenario read top to bottom (set up, measure the baseline
# and the subject in the same run, report), where the order of the steps is the method.
def test_ingest_throughput_ratios(
    database_factory: DatabaseFactory,
    migrated_template: str,
    mqtt_broker: Broker,
    tmp_path: Path,
) -> None:
    setup_url = database_factory.clone(migrated_template)
    with psycopg.connect(setup_url, autocommit=True) as conn:
        devices = register(conn)
    data = dataset(devices)
    # Every path starts from a copy of the same registered, empty database.
    setup_name = psycopg.conninfo.conninfo_to_dict(setup_url)["dbname"]
    with database_factory.server.admin() as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                psycopg.sql.Identifier(str(setup_name))
            )
        )
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (setup_name,),
        )
    urls = {
        path: database_factory.clone(str(setup_name))
        for path in ("raw_copy", "idempotent", "http", "mqtt")
    }
    seconds: dict[str, float] = {}
    cpu: dict[str, dict[str, float | None]] = {}
    pg_port = int(psycopg.conninfo.conninfo_to_dict(setup_url)["port"] or 5432)

    def settle(url: str) -> None:
        """After a phase: vacuum its database and checkpoint, so that the background work its
        writes cause (autovacuum of a million new rows, a checkpoint) is not charged to the
        next phase's PostgreSQL CPU."""
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) rpm.readings")
        with database_factory.server.admin() as admin:
            admin.execute("CHECKPOINT")

    def measure_cpu(path: str, server_pid: int | None = None) -> Callable[[], None]:
        """Start counting CPU for ``path``; the returned function stops counting."""

        def now() -> tuple[float | None, float, float | None]:
            server = None if server_pid is None else process_cpu_s(server_pid)
            return postgres_cpu_s(pg_port), self_cpu_s(), server

        before = now()

        def stop() -> None:
            # Exited backends count once reaped; let the postmaster reap them.
            time.sleep(0.5)
            after = now()
            cpu[path] = {
                name: None if b is None or a is None else round(a - b, 2)
                for name, b, a in zip(
                    ("postgres", "this_process", "server_process"), before, after, strict=True
                )
            }

        return stop

    # Inputs are prepared before the clocks start: exactly the rows the committer's fast
    # path writes, the validated requests, the JSON payloads.
    records = ReadingColumns.from_readings(list(data.readings()))
    requests = requests_of(records)
    payloads = list(data.payloads())

    settle(urls["raw_copy"])  # the clones' creation checkpoints too
    stop = measure_cpu("raw_copy")
    seconds["raw_copy"] = asyncio.run(raw_copy(urls["raw_copy"], records))
    stop()
    settle(urls["raw_copy"])
    stop = measure_cpu("idempotent")
    seconds["idempotent"] = asyncio.run(idempotent_commit(urls["idempotent"], requests))
    stop()
    settle(urls["idempotent"])

    port = free_port()
    api = start_child(
        # The device-ingest service as deployed (compose's ingest-http): no clinician routes.
        ["serve", "--role", "ingest", "--port", str(port), "--workers", str(API_WORKERS)],
        {
            "DATABASE_URL": urls["http"],
            "MQTT_URL": "mqtt://unused@127.0.0.1:1",
            # Throughput of the ingest path, not the edge's per-device budget: a few devices
            # send as fast as the server answers.
            "RPMSTORE_HTTP_DEVICE_RATE_PER_S": "0",
        },
        tmp_path / "api.log",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        stop = measure_cpu("http", api.process.pid)
        seconds["http"] = asyncio.run(http_end_to_end(port, payloads))
        stop()
    finally:
        api.stop()
    settle(urls["http"])

    ingestor = start_child(
        ["ingest", "mqtt"],
        {
            "DATABASE_URL": urls["mqtt"],
            "MQTT_URL": mqtt_broker.url(INGEST_USER),
            "RPMSTORE_MQTT_CLIENT_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "RPMSTORE_MQTT_GROUP": f"bench{uuid.uuid4().hex[:6]}",
            "RPMSTORE_LOG_LEVEL": "INFO",
        },
        tmp_path / "ingestor.log",
    )
    try:
        ingestor.wait_for_log(b"MQTT connected")
        stop = measure_cpu("mqtt", ingestor.process.pid)
        seconds["mqtt"] = mqtt_end_to_end(mqtt_broker, urls["mqtt"], payloads, data.rows)
        stop()
    finally:
        ingestor.stop()

    for path, url in urls.items():
        assert count_rows(url) == data.rows, f"{path} stored a different number of rows"
    rows_per_s = {path: data.rows / s for path, s in seconds.items()}
    baseline = rows_per_s["raw_copy"]
    result = {
        "rows": data.rows,
        "readings_per_payload": READINGS_PER_PAYLOAD,
        "concurrency": CONCURRENCY,
        "api_workers": API_WORKERS,
        "rows_per_s": {k: round(v) for k, v in rows_per_s.items()},
        "ratio_to_raw_copy": {k: round(v / baseline, 3) for k, v in rows_per_s.items()},
        "dedup_tax": round(rows_per_s["idempotent"] / baseline, 3),
        "cpu_s": cpu,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")
    print(  # noqa: T201 - the benchmark's report
        "\n| path | rows/s | ÷ raw COPY | CPU s: PostgreSQL | server | load generator |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for path in seconds:
        used = cpu.get(path, {})
        print(  # noqa: T201
            f"| {path} | {rows_per_s[path]:,.0f} | {rows_per_s[path] / baseline:.2f} "
            f"| {used.get('postgres')} | {used.get('server_process')} "
            f"| {used.get('this_process')} |"
        )
