"""Clinician API latency idle and under sustained ingest, rollups against raw, alert visibility.

One run, one database, tens of millions of readings (``RPMSTORE_BENCH_API_ROWS``, default 50
million), everything measured minutes apart on the same machine:

1. Load: 200 patients on continuous monitoring (each with a registered wearable), three
   metrics (heart rate, SpO2, respiratory rate), one reading of each every N seconds over
   about 45 days (47 s at 50 million: dense series, where rollups matter), generated
   server-side by INSERT ... SELECT over generate_series on several connections at once (the
   schema's indexes stay in place), under one registered import batch; then the rollups are
   refreshed with ``jobs.rollups.refresh_rollups`` over the whole span (as if the refresher
   had run all along) and the whole database vacuumed and analyzed. Each step is timed.
2. Latency through the real servers, deployed as in docker-compose.yml: two processes, the
   clinician API (``rpmstore serve --role api``: clinician routes only, on the rpmstore_api
   role) and device ingest over HTTP (``rpmstore serve --role ingest``: ``POST /v1/readings``
   only), both on the same database. Latest vitals (``GET /v1/patients/{id}/vitals/latest``)
   and a 24-hour timeline (``GET /v1/patients/{id}/vitals?resolution=auto``, which picks
   1-minute buckets), alternated, one request at a time against the API server, each patient
   read by a clinician of their care team. p50/p99 idle, then again while another process
   POSTs device payloads to the ingest server at full speed. Ratio: under load / idle (target
   <= 2), with the ingest rows/s achieved meanwhile. (``RPMSTORE_BENCH_API_ROLES=all`` runs
   both on one ``rpmstore serve`` instead, as before the split, for comparison.)
3. Rollups / raw: a 30-day hourly timeline of one patient's metric from the rollups
   (``rpm.vitals_timeline``) and the same aggregation computed from ``rpm.readings``; the
   answers are checked equal. Ratio: raw time / rollup time (target >= 50).
4. Alert visibility: a reading that breaches a default rule (systolic 200 mm[Hg]) is POSTed
   to the ingest server for a patient without alerts; the delay runs from its HTTP 200 (sent
   after COMMIT) until ``GET /v1/alerts`` on the API server shows the alert to the patient's
   clinician. Idle and under the load.

The load generator's CPU is reported; a run where it (or the probing process) saturates a core
is rejected, because then the client, not the server, would set the figures. Results go to
reports/bench-api.json and stdout as a markdown table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from jobs.rollups import refresh_rollups
from schema.registry import PatientIdentity, assign_device, register_device, register_patient
from schema.sql import parse_queries
from tests.apphelpers import bearer
from tests.conftest import DatabaseFactory, free_port

# Loading 50 million readings takes a while on a small machine (not part of make test).
pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(6 * 3600)]
log = logging.getLogger(__name__)

ROWS = int(os.environ.get("RPMSTORE_BENCH_API_ROWS", "50000000"))
PATIENTS = int(os.environ.get("RPMSTORE_BENCH_API_PATIENTS", "200"))
DAYS = float(os.environ.get("RPMSTORE_BENCH_API_DAYS", "45"))
LOAD_JOBS = int(os.environ.get("RPMSTORE_BENCH_API_LOAD_JOBS", "2"))
REQUESTS = int(os.environ.get("RPMSTORE_BENCH_API_REQUESTS", "500"))
ALERT_TRIALS = int(os.environ.get("RPMSTORE_BENCH_API_ALERT_TRIALS", "50"))
# A trial whose alert is not listed by then counts as not visible; after a few such trials
# the rest are skipped (the engine is not keeping up, and waiting longer measures nothing).
ALERT_GIVE_UP_S = 20.0
ALERT_MAX_MISSES = 3
RAW_TRIALS = int(os.environ.get("RPMSTORE_BENCH_API_RAW_TRIALS", "30"))
API_WORKERS = int(os.environ.get("RPMSTORE_BENCH_API_WORKERS", "1"))
# "split": an api-role and an ingest-role server (the deployment); "all": one server for both.
ROLES = os.environ.get("RPMSTORE_BENCH_API_ROLES", "split")
# CPU priority of the ingest server (nice), as docker-compose.yml weights it (cpu_shares 256
# against the default 1024, about nice 6): on a shared machine, bulk device ingest (buffered,
# answers 503 and Retry-After when it falls behind) yields the CPU to clinicians' requests.
INGEST_NICE = int(os.environ.get("RPMSTORE_BENCH_API_INGEST_NICE", "6"))
LOAD_DEVICES = int(os.environ.get("RPMSTORE_BENCH_API_LOAD_DEVICES", "1000"))
LOAD_CONCURRENCY = int(os.environ.get("RPMSTORE_BENCH_API_LOAD_CONCURRENCY", "8"))
LOAD_PAYLOAD = int(os.environ.get("RPMSTORE_BENCH_API_LOAD_PAYLOAD", "500"))
# Time between two readings of one load device (20 ms: a device's clock stays behind the
# wall clock with 1000 devices; 1000 ms is a bedside monitor's 1 Hz, needs more devices).
LOAD_SPACING_MS = int(os.environ.get("RPMSTORE_BENCH_API_LOAD_SPACING_MS", "20"))
TEAM_SIZE = 100
# (metric_id, lowest value, number of distinct values): heart rate, SpO2, respiratory rate.
METRICS = ((1, 60.0, 40), (4, 93.0, 7), (3, 12.0, 9))
HEART_RATE = 1
# A load-generating process above this share of one core is the bottleneck, not the server.
CPU_LIMIT = 0.9
REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench-api.json"
Q = parse_queries(
    (Path(__file__).with_name("api_latency.sql")).read_text(), source="benchmarks/api_latency.sql"
)


@dataclass(frozen=True)
class Patient:
    patient_id: uuid.UUID
    device_id: uuid.UUID
    device_token: str
    headers: dict[str, str]  # a clinician of the patient's care team


@dataclass(frozen=True)
class Plan:
    """Where the bulk readings fall: steps of ``step`` from ``t0`` (a whole hour)."""

    t0: datetime
    step: timedelta
    steps: int

    @property
    def end(self) -> datetime:
        return self.t0 + self.steps * self.step

    @property
    def rows(self) -> int:
        return self.steps * PATIENTS * len(METRICS)


def plan() -> Plan:
    steps = math.ceil(ROWS / (PATIENTS * len(METRICS)))
    step = timedelta(seconds=max(1, round(DAYS * 86400 / steps)))
    # Ends a few minutes before now, on a whole hour or later: the newest readings are recent.
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    t0 = (end - steps * step).replace(minute=0, second=0, microsecond=0)
    return Plan(t0, step, steps)


def register(conn: psycopg.Connection, start: datetime) -> list[Patient]:
    patients: list[Patient] = []
    with conn.transaction():
        for team_no in range(math.ceil(PATIENTS / TEAM_SIZE)):
            team = _one(conn, "new_care_team", name=f"bench-team-{team_no}")
            subject = f"bench-clinician-{team_no}"
            clinician = _one(conn, "new_clinician", subject=subject)
            conn.execute(Q["add_member"], {"care_team_id": team, "clinician_id": clinician})
            headers = bearer(subject, ["clinician"], [team], lifetime_s=4 * 3600)
            members = []
            for n in range(min(TEAM_SIZE, PATIENTS - len(patients))):
                number = len(patients) + n
                patient = register_patient(
                    conn, identity=PatientIdentity(given_name=f"Bench {number}")
                )
                device = register_device(
                    conn,
                    kind="wearable",
                    manufacturer="Bench",
                    model="Vitals",
                    serial_number=f"V-{number}",
                )
                assign_device(
                    conn, device_id=device.device_id, patient_id=patient, valid_from=start
                )
                members.append(Patient(patient, device.device_id, device.token, headers))
            conn.execute(
                Q["add_team_patients"],
                {"care_team_id": team, "patients": [p.patient_id for p in members]},
            )
            patients.extend(members)
    return patients


def register_load_devices(conn: psycopg.Connection, start: datetime) -> list[tuple[str, str]]:
    """Devices of patients outside every measured care team: the ingest load's senders."""
    devices = []
    with conn.transaction():
        for n in range(LOAD_DEVICES):
            patient = register_patient(conn)
            device = register_device(
                conn, kind="wearable", manufacturer="Load", model="HR", serial_number=f"L-{n}"
            )
            assign_device(conn, device_id=device.device_id, patient_id=patient, valid_from=start)
            devices.append((str(device.device_id), device.token))
    return devices


def _one(conn: psycopg.Connection, query: str, **params: Any) -> Any:
    row = conn.execute(Q[query], params).fetchone()
    assert row is not None
    return row[0]


def bulk_load(url: str, patients: list[Patient], layout: Plan) -> float:
    """INSERT ... SELECT the readings, a slice of steps per statement on LOAD_JOBS connections."""
    with psycopg.connect(url, autocommit=True) as conn:
        batch_id = _one(conn, "register_batch", rows=layout.rows)
    # About half a million rows per statement: big enough to amortize, small enough to spread.
    per_slice = max(1, 500_000 // (PATIENTS * len(METRICS)))
    slices = [
        (first, min(first + per_slice, layout.steps)) for first in range(0, layout.steps, per_slice)
    ]
    params = {
        "t0": layout.t0,
        "step": layout.step,
        "jitter": layout.step / PATIENTS,
        "batch_id": batch_id,
        "patients": [p.patient_id for p in patients],
        "devices": [p.device_id for p in patients],
        "metrics": [m[0] for m in METRICS],
        "bases": [m[1] for m in METRICS],
        "spans": [m[2] for m in METRICS],
    }
    work = iter(slices)

    def loader() -> int:
        written = 0
        with psycopg.connect(url, autocommit=True) as conn:
            for first, last in work:
                cur = conn.execute(
                    Q["load_steps"], {**params, "first_step": first, "last_step": last}
                )
                written += cur.rowcount
        return written

    started = time.perf_counter()
    with ThreadPoolExecutor(LOAD_JOBS) as pool:
        written = sum(pool.map(lambda _: loader(), range(LOAD_JOBS)))
    elapsed = time.perf_counter() - started
    assert written == layout.rows
    return elapsed


@dataclass
class Api:
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def start_api(owner_url: str, api_url: str, log: Path, *, role: str, nice: int = 0) -> Api:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(["nice", "-n", str(nice)] if nice else []),
                sys.executable,
                "-m",
                "rpmstore.cli",
                "serve",
                "--role",
                role,
                "--port",
                str(port),
                "--workers",
                str(API_WORKERS),
            ],
            env={
                **os.environ,
                "DATABASE_URL": owner_url,
                "API_DATABASE_URL": api_url,
                "MQTT_URL": "mqtt://unused@127.0.0.1:1",
                "RPMSTORE_LOG_FORMAT": "json",
                "RPMSTORE_LOG_LEVEL": "WARNING",
                # The device load is generated faster per device than real devices send; the
                # per-device budget (api/edge.py) is not what this measures.
                "RPMSTORE_HTTP_DEVICE_RATE_PER_S": "0",
            },
            stdout=out,
            stderr=out,
        )
    api = Api(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx2.get(f"{api.base}/readyz").status_code == 200:
                return api
        except httpx2.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


def start_servers(owner_url: str, api_url: str, work: Path) -> dict[str, Api]:
    """The clinician API and device ingest servers (the same process when ROLES is "all")."""
    if ROLES == "all":
        both = start_api(owner_url, api_url, work / "api.log", role="all")
        return {"api": both, "ingest": both}
    assert ROLES == "split", f"RPMSTORE_BENCH_API_ROLES={ROLES!r}: split or all"
    api = start_api(owner_url, api_url, work / "api.log", role="api")
    try:
        ingest = start_api(owner_url, api_url, work / "ingest.log", role="ingest", nice=INGEST_NICE)
    except BaseException:
        api.stop()
        raise
    return {"api": api, "ingest": ingest}


def distinct(servers: dict[str, Api]) -> list[Api]:
    return list({id(server): server for server in servers.values()}.values())


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds (nearest-rank)."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

    return {
        "p50_ms": round(rank(0.50), 2),
        "p99_ms": round(rank(0.99), 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "n": len(ordered),
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Prober:
    """One request at a time, as a clinician's screen would make them."""

    def __init__(self, client: httpx2.Client, patients: list[Patient], end: datetime) -> None:
        self.client = client
        self.patients = patients
        end = end.replace(second=0, microsecond=0)  # minute-aligned: exactly 1440 buckets
        self.day = (end - timedelta(hours=24)).isoformat(), end.isoformat()

    def latest(self, patient: Patient) -> None:
        response = self.client.get(
            f"/v1/patients/{patient.patient_id}/vitals/latest", headers=patient.headers
        )
        assert response.status_code == 200, response.text
        # (a patient of the alert trials also has a blood pressure by then)
        assert len(response.json()["vitals"]) >= len(METRICS)

    def timeline(self, patient: Patient) -> None:
        start, end = self.day
        response = self.client.get(
            f"/v1/patients/{patient.patient_id}/vitals",
            params={"metric": "heart_rate", "start": start, "end": end, "resolution": "auto"},
            headers=patient.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["resolution"] == "1m" and len(body["points"]) == 24 * 60

    def measure(self, requests: int) -> dict[str, list[float]]:
        timings: dict[str, list[float]] = {"latest_vitals": [], "timeline_24h": []}
        probes: dict[str, Callable[[Patient], None]] = {
            "latest_vitals": self.latest,
            "timeline_24h": self.timeline,
        }
        for n in range(requests):
            patient = self.patients[(n * 7919) % len(self.patients)]
            for name, probe in probes.items():
                started = time.perf_counter()
                probe(patient)
                timings[name].append(time.perf_counter() - started)
        return timings


@dataclass
class Visibility:
    delays: list[float]  # seconds, of the alerts that became visible
    not_visible: int  # trials whose alert was not listed within ALERT_GIVE_UP_S

    def summary(self) -> dict[str, Any]:
        figures: dict[str, Any] = percentiles(self.delays) if self.delays else {"n": 0}
        return {**figures, "not_visible_within_s": ALERT_GIVE_UP_S, "not_visible": self.not_visible}


def alert_visibility(
    client: httpx2.Client, devices: httpx2.Client, patients: Iterator[Patient], trials: int
) -> Visibility:
    """Seconds from a breaching reading's 200 (from the ingest server, ``devices``) until its
    alert is listed for the clinician (by the API server, ``client``)."""
    seen = Visibility([], 0)
    for _ in range(trials):
        if seen.not_visible >= ALERT_MAX_MISSES:
            break
        patient = next(patients)
        body = {
            "device_id": str(patient.device_id),
            "readings": [
                {
                    "metric": "bp_systolic",
                    "value": 200,
                    "unit": "mm[Hg]",
                    "time": int(time.time() * 1000),
                }
            ],
        }
        response = devices.post(
            "/v1/readings",
            json=body,
            headers={"Authorization": f"Bearer {patient.device_token}"},
        )
        committed = time.perf_counter()
        assert response.status_code == 200 and response.json()["stored"] == 1, response.text
        while True:
            listed = client.get(
                "/v1/alerts",
                params={"patient_id": str(patient.patient_id), "status": "open"},
                headers=patient.headers,
            )
            assert listed.status_code == 200, listed.text
            waited = time.perf_counter() - committed
            if listed.json()["items"]:
                seen.delays.append(waited)
                break
            if waited > ALERT_GIVE_UP_S:
                seen.not_visible += 1
                break
    return seen


def rollup_versus_raw(url: str, patients: list[Patient], end: datetime) -> dict[str, Any]:
    """The same 30-day hourly timeline from the rollups and from raw readings, alternated."""
    end = end.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=30)
    seconds: dict[str, list[float]] = {"rollup_hourly": [], "raw_hourly": []}
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(RAW_TRIALS + 1):
            patient = patients[(n * 104729) % len(patients)]
            params = {
                "patient_id": patient.patient_id,
                "metric_id": HEART_RATE,
                "start": start,
                "end": end,
            }
            answers = {}
            order = ("rollup_hourly", "raw_hourly") if n % 2 else ("raw_hourly", "rollup_hourly")
            for name in order:
                started = time.perf_counter()
                answers[name] = conn.execute(Q[name], params).fetchall()
                if n:  # the first round only warms the caches
                    seconds[name].append(time.perf_counter() - started)
            same_answers(answers["rollup_hourly"], answers["raw_hourly"])
    rollup, raw = (statistics.median(seconds[k]) for k in ("rollup_hourly", "raw_hourly"))
    return {
        "buckets": 30 * 24,
        "rollup": percentiles(seconds["rollup_hourly"]),
        "raw": percentiles(seconds["raw_hourly"]),
        "raw_over_rollup_p50": round(raw / rollup, 1),
    }


def same_answers(rollup: list[tuple[Any, ...]], raw: list[tuple[Any, ...]]) -> None:
    assert len(rollup) == len(raw) == 30 * 24
    assert sum(row[1] for row in raw) > 0
    for a, b in zip(rollup, raw, strict=True):
        # bucket, count, min, max, last, last_at exactly; the average up to float rounding
        assert (a[0], a[1], a[2], a[3], a[5], a[6]) == (b[0], b[1], b[2], b[3], b[5], b[6])
        assert (a[4] is None and b[4] is None) or math.isclose(a[4], b[4], rel_tol=1e-12)


@dataclass
class LoadRun:
    process: subprocess.Popen[bytes]
    out: Path

    def results(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        assert self.process.returncode == 0, self.out.with_suffix(".log").read_text()[-2000:]
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


def start_load(base: str, devices: list[tuple[str, str]], start: datetime, work: Path) -> LoadRun:
    config = work / "load.json"
    config.write_text(
        json.dumps(
            {
                "base_url": base,
                "devices": devices,
                "concurrency": LOAD_CONCURRENCY,
                "readings_per_payload": LOAD_PAYLOAD,
                "start_ms": int(start.timestamp() * 1000),
                "spacing_ms": LOAD_SPACING_MS,
            }
        )
    )
    out = work / "load-out.json"
    with out.with_suffix(".log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ingest_load", str(config), str(out)],
            stdout=log,
            stderr=log,
        )
    return LoadRun(process, out)


# Long on purpose: one scripted scenario read top to bottom (set up, measure the baseline
# and the subject in the same run, report), where the order of the steps is the method.
def test_api_latency_and_rollups(
    database_factory: DatabaseFactory,
    migrated_template: str,
    tmp_path: Path,
) -> None:
    layout = plan()
    url = database_factory.clone(migrated_template)
    name = str(conninfo_to_dict(url)["dbname"])
    api_url = database_factory.server.url(name, api=True)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        patients = register(conn, layout.t0 - timedelta(days=1))
        load_devices = register_load_devices(conn, layout.t0 - timedelta(days=1))
    log.info("registered", extra={"seconds": time.perf_counter() - started})

    # Bulk-load tuning of the benchmark's own server only; reset before anything is measured.
    own_server = database_factory.server.instance is not None
    timings: dict[str, float] = {}
    try:
        if own_server:
            with database_factory.server.admin() as admin:
                admin.execute(Q["set_bulk_wal"])
                admin.execute(Q["reload_config"])
        timings["load_s"] = bulk_load(url, patients, layout)
        log.info("bulk loaded", extra={"rows": layout.rows, "seconds": timings["load_s"]})
    finally:
        if own_server:
            with database_factory.server.admin() as admin:
                admin.execute(Q["reset_bulk_wal"])
                admin.execute(Q["reload_config"])
    with psycopg.connect(url, autocommit=True) as conn:
        # Set-up speed only: without JIT, each of the refresher's day-by-day statements skips
        # a compilation that costs more than the statement on a busy 2-core machine.
        conn.execute(Q["jit_off"])
        started = time.perf_counter()
        report = refresh_rollups(conn, raw_horizon=(layout.end - layout.t0) + timedelta(days=3))
        timings["rollup_refresh_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(Q["vacuum_analyze_database"])
        timings["vacuum_analyze_s"] = time.perf_counter() - started
    with database_factory.server.admin() as admin:
        admin.execute(Q["checkpoint"])  # the load's dirty pages are not written during probes
    log.info("loaded", extra=timings)
    assert report.materialized_until is not None and report.materialized_until >= layout.end

    rollups = rollup_versus_raw(url, patients, layout.end)
    log.info("rollups versus raw", extra=rollups)

    servers = start_servers(url, api_url, tmp_path)
    api, ingest = servers["api"], servers["ingest"]
    # Fresh patients for the alert trials, idle and under load: enough of them whatever
    # RPMSTORE_BENCH_API_PATIENTS is (each trial gives its patient an alert).
    alert_patients = iter(patients[1 :: max(1, len(patients) // (2 * ALERT_TRIALS + 2))])
    try:
        with (
            httpx2.Client(base_url=api.base, timeout=60) as client,
            httpx2.Client(base_url=ingest.base, timeout=60) as devices,
        ):
            prober = Prober(client, patients, layout.end)
            prober.measure(max(20, REQUESTS // 10))  # warm-up: connections, caches, plans

            cpu = self_cpu_s()
            started = time.perf_counter()
            idle = prober.measure(REQUESTS)
            idle_window = time.perf_counter() - started
            idle_prober_cpu = (self_cpu_s() - cpu) / idle_window
            idle_alerts = alert_visibility(client, devices, alert_patients, ALERT_TRIALS)

            # From the rollups' invalidation threshold on: the load is new data, not late data.
            assert report.threshold is not None
            load_from = max(report.threshold, datetime.now(UTC) - timedelta(minutes=10))
            load = start_load(ingest.base, load_devices, load_from, tmp_path)
            try:
                time.sleep(5)  # until the senders and the group committer run steadily
                assert load.process.poll() is None, load.out.with_suffix(".log").read_text()
                load_cpu, cpu = process_cpu_s(load.process.pid), self_cpu_s()
                window_start, started = time.time(), time.perf_counter()
                busy = prober.measure(REQUESTS)
                window_end, busy_window = time.time(), time.perf_counter() - started
                busy_load_cpu = (process_cpu_s(load.process.pid) - load_cpu) / busy_window
                busy_prober_cpu = (self_cpu_s() - cpu) / busy_window
                busy_alerts = alert_visibility(client, devices, alert_patients, ALERT_TRIALS)
            finally:
                outcome = load.results()
    finally:
        for server in distinct(servers):
            server.stop()
    for server in distinct(servers):
        assert "Traceback" not in server.log.read_text(), server.log.read_text()[-4000:]

    stored_in_window = sum(n for t, n in outcome["stored"] if window_start <= t <= window_end)
    with psycopg.connect(url) as conn:
        load_rows = _one(conn, "load_device_rows", devices=[d for d, _ in load_devices])
    assert load_rows == sum(n for _, n in outcome["stored"]), "load rows acknowledged != stored"
    ingest_rows_per_s = stored_in_window / (window_end - window_start)

    latency: dict[str, dict[str, Any]] = {}
    for name in idle:
        quiet, loaded = percentiles(idle[name]), percentiles(busy[name])
        latency[name] = {
            "idle": quiet,
            "under_ingest": loaded,
            "ratio_p50": round(loaded["p50_ms"] / quiet["p50_ms"], 2),
            "ratio_p99": round(loaded["p99_ms"] / quiet["p99_ms"], 2),
        }
    result = {
        "rows": layout.rows,
        "patients": PATIENTS,
        "metrics": len(METRICS),
        "step_s": layout.step.total_seconds(),
        "days": round((layout.end - layout.t0) / timedelta(days=1), 1),
        "load": {
            **{k: round(v, 1) for k, v in timings.items()},
            "load_rows_per_s": round(layout.rows / timings["load_s"]),
            "jobs": LOAD_JOBS,
            "rollup_rows_written": dict(report.rows_written),
        },
        "api_workers": API_WORKERS,
        "servers": (
            f"api and ingest roles (ingest at nice {INGEST_NICE})"
            if ROLES == "split"
            else "one server (role all)"
        ),
        "latency": latency,
        "ingest_during_measurement": {
            "rows_per_s": round(ingest_rows_per_s),
            "concurrency": LOAD_CONCURRENCY,
            "readings_per_payload": LOAD_PAYLOAD,
            "devices": LOAD_DEVICES,
            "reading_spacing_ms": LOAD_SPACING_MS,
            "non_200_answers": outcome["other"],
        },
        "rollup_vs_raw_30d_hourly": rollups,
        "alert_visibility": {
            "idle": idle_alerts.summary(),
            "under_ingest": busy_alerts.summary(),
        },
        "client_cpu_share_of_a_core": {
            "load_generator": round(busy_load_cpu, 2),
            "prober_idle": round(idle_prober_cpu, 2),
            "prober_under_ingest": round(busy_prober_cpu, 2),
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")
    # The servers' warnings (e.g. alert evaluations parked at shutdown) explain the figures.
    REPORT.with_suffix(".api.log").write_bytes(
        b"".join(server.log.read_bytes() for server in distinct(servers))
    )
    print_table(result)
    # Figures set by a saturated client say nothing about the server: reject the run.
    assert busy_load_cpu < CPU_LIMIT, f"the load generator saturated a core ({busy_load_cpu:.2f})"
    assert max(idle_prober_cpu, busy_prober_cpu) < CPU_LIMIT, "the prober saturated a core"


def print_table(result: dict[str, Any]) -> None:
    out = [
        f"\n{result['rows']:,} readings; load {result['load']['load_s']} s "
        f"({result['load']['load_rows_per_s']:,} rows/s), rollup refresh "
        f"{result['load']['rollup_refresh_s']} s, vacuum+analyze "
        f"{result['load']['vacuum_analyze_s']} s",
        "",
        "| measure | idle p50 / p99 ms | under ingest p50 / p99 ms | ratio p50 / p99 |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in result["latency"].items():
        idle, busy = figures["idle"], figures["under_ingest"]
        out.append(
            f"| {name} | {idle['p50_ms']} / {idle['p99_ms']} | {busy['p50_ms']} / "
            f"{busy['p99_ms']} | {figures['ratio_p50']} / {figures['ratio_p99']} |"
        )
    alerts = {
        phase: f"{v['p50_ms']} / {v['p99_ms']}" if v["n"] else "-"
        for phase, v in result["alert_visibility"].items()
    }
    misses = {phase: v["not_visible"] for phase, v in result["alert_visibility"].items()}
    out.append(
        f"| alert visible after commit (not within {ALERT_GIVE_UP_S:.0f} s: "
        f"{misses['idle']} / {misses['under_ingest']}) | {alerts['idle']} "
        f"| {alerts['under_ingest']} | |"
    )
    rollups = result["rollup_vs_raw_30d_hourly"]
    out += [
        "",
        f"servers: {result['servers']}; "
        f"ingest during measurement: {result['ingest_during_measurement']['rows_per_s']:,} rows/s; "
        f"load generator CPU {result['client_cpu_share_of_a_core']['load_generator']} core",
        f"30-day hourly timeline: rollups p50 {rollups['rollup']['p50_ms']} ms, raw p50 "
        f"{rollups['raw']['p50_ms']} ms: raw / rollup = {rollups['raw_over_rollup_p50']}x",
    ]
    print("\n".join(out))  # noqa: T201 - the benchmark's report
