"""``python -m loadtests.run``: a headless Locust run against the local stack, judged by SLOs.

``make loadtest`` (short profile) and ``make soak DURATION=...`` run it after ``rpmstore db up``
and ``rpmstore migrate up``. It:

1. registers a ward (``rpmstore.simulate_ward.register_ward``) with one device per Locust user
   and gives every device its broker account (``rpmstore broker sync``'s function);
2. starts ``rpmstore ingest mqtt`` and ``rpmstore serve`` as child processes (as the demo does);
3. runs Locust headless (``loadtests/locustfile.py``) for the duration, writing its CSV and HTML
   report to ``reports/loadtest/``, while sampling the CPU of Locust and of the servers (psutil);
4. waits until ingest has processed what the devices were told was received, then measures from
   the database: rows stored, duplicates, quarantine, rows/s, and the decay ratio (rows/s in the
   last 10 % of the run ÷ the first 10 %);
5. writes ``summary.json`` and ``summary.md`` and fails (exit 1) on any failed request, a missed
   p99 objective (``loadtests/loadtest.toml``), readings not accounted for, a load generator that
   saturated its core, or (soak) a decay ratio under the objective.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx2
import numpy as np
import psutil
import psycopg

from ingest.transport import parse_broker_url
from loadtests.fleet import Fleet, split_devices
from rpmstore.cli import token_signer
from rpmstore.clinician_demo import create_care_team
from rpmstore.localstack import stack
from rpmstore.logs import configure_logging
from rpmstore.settings import Settings
from rpmstore.simulate import DatabaseOutcome, Via, database_outcome
from rpmstore.simulate_ward import Shares, Ward, register_ward
from rpmstore.ward_demo import child, child_env, forget_session, free_port, wait_ready
from schema.sql import parse_queries, queries

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
CONFIG = HERE / "loadtest.toml"
OUT = HERE.parent / "reports" / "loadtest"
LOADTEST_CLINICIAN: Final = "loadtest-clinician"
INGEST_CLIENT_ID: Final = "rpmstore-loadtest-ingest"  # stable: one session, ended after the run
CPU_WINDOW_S: Final = 5
DRAIN_TIMEOUT_S: Final = 120.0
_VIAS: Final[tuple[Via, ...]] = ("http", "mqtt")


def _q(name: str) -> str:
    text = (HERE / "queries.sql").read_text()
    return parse_queries(text, source="loadtests/queries.sql")[name]


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h`` to seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 60s, 30m, 2h)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


@dataclass
class CpuSampler:
    """CPU of processes (by name) as % of one core, sampled every second in a thread."""

    processes: dict[str, psutil.Process]
    samples: dict[str, list[float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        for process in self.processes.values():
            process.cpu_percent(None)  # the first call only sets the reference point
        threading.Thread(target=self._run, name="cpu-sampler", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, process in self.processes.items():
                try:
                    # The process's children too: uvicorn workers, Locust's own helpers.
                    total = process.cpu_percent(None) + sum(
                        _child_cpu(c) for c in process.children(recursive=True)
                    )
                except psutil.NoSuchProcess:
                    continue
                self.samples.setdefault(name, []).append(total)

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "mean_core_percent": round(float(np.mean(values)), 1),
                "max_5s_core_percent": round(max_window_mean(values, CPU_WINDOW_S), 1),
            }
            for name, values in self.samples.items()
            if values
        }


_CHILD_CPU: dict[int, psutil.Process] = {}


def _child_cpu(process: psutil.Process) -> float:
    # cpu_percent needs the same Process object between calls to have a reference point.
    known = _CHILD_CPU.setdefault(process.pid, process)
    try:
        return float(known.cpu_percent(None))
    except psutil.NoSuchProcess:
        return 0.0


def max_window_mean(values: Sequence[float], window: int) -> float:
    if len(values) < window:
        return float(np.mean(values)) if values else 0.0
    sums = np.convolve(np.asarray(values, dtype=float), np.ones(window), mode="valid")
    return float(sums.max() / window)


@dataclass(frozen=True)
class EndpointStats:
    kind: str
    name: str
    requests: int
    failures: int
    median_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float


def read_locust_stats(csv_path: Path) -> list[EndpointStats]:
    import csv

    rows = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                continue
            rows.append(
                EndpointStats(
                    kind=row["Type"],
                    name=row["Name"],
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    median_ms=_number(row["50%"]),
                    p95_ms=_number(row["95%"]),
                    p99_ms=_number(row["99%"]),
                    requests_per_s=_number(row["Requests/s"]),
                )
            )
    return rows


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" when an endpoint got no requests
        return math.nan


def judge(
    endpoints: list[EndpointStats],
    cpu: Mapping[str, Mapping[str, float]],
    slo: Mapping[str, Any],
) -> list[str]:
    """Every way the run missed its objectives (empty: passed)."""
    problems = []
    by_name = {e.name: e for e in endpoints}
    for name, limit in slo["p99_ms"].items():
        stats = by_name.get(name)
        if stats is None or stats.requests == 0:
            problems.append(f"no requests for {name!r}")
        elif not stats.p99_ms <= limit:
            problems.append(f"{name}: p99 {stats.p99_ms:.0f} ms > objective {limit} ms")
    requests = sum(e.requests for e in endpoints)
    failures = sum(e.failures for e in endpoints)
    if requests and failures / requests > slo["max_error_ratio"]:
        problems.append(f"{failures} of {requests} requests failed")
    generator = cpu.get("locust", {}).get("max_5s_core_percent", 0.0)
    if generator >= slo["generator_max_core_percent"]:
        problems.append(
            f"the load generator saturated its core ({generator:.0f} % of a core over 5 s); "
            "the figures measure Locust, not rpmstore: use fewer users or a bigger machine"
        )
    return problems


@dataclass(frozen=True)
class Throughput:
    run_s: float
    rows: int
    rows_per_s: float
    first_10pct_rows_per_s: float
    last_10pct_rows_per_s: float

    @property
    def decay_ratio(self) -> float:
        if self.first_10pct_rows_per_s == 0:
            return math.nan
        return self.last_10pct_rows_per_s / self.first_10pct_rows_per_s


def throughput(
    conn: psycopg.Connection, after_batch: int, start: datetime, end: datetime
) -> Throughput:
    """Rows/s committed in the window, overall and in its first and last 10 % (database time)."""

    def rows(low: datetime, high: datetime) -> int:
        row = conn.execute(
            _q("rows_committed_between"), {"after_batch": after_batch, "from": low, "to": high}
        ).fetchone()
        assert row is not None
        return int(row[0])

    span = end - start
    tenth = span / 10
    seconds = span.total_seconds()
    total = rows(start, end)
    return Throughput(
        run_s=round(seconds, 1),
        rows=total,
        rows_per_s=round(total / seconds, 1),
        first_10pct_rows_per_s=round(rows(start, start + tenth) / tenth.total_seconds(), 1),
        last_10pct_rows_per_s=round(rows(end - tenth, end) / tenth.total_seconds(), 1),
    )


def _scalar(conn: psycopg.Connection, statement: str) -> int:
    row = conn.execute(statement, {}).fetchone()
    assert row is not None
    return int(row[0])


def wait_processed(
    conn: psycopg.Connection, after_batch: int, device_ids: list[uuid.UUID], sent: Mapping[str, int]
) -> dict[Via, DatabaseOutcome]:
    """Until ingest has processed every reading each transport acknowledged (bounded)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        outcomes = {
            via: database_outcome(conn, source=via, after_batch=after_batch, device_ids=device_ids)
            for via in _VIAS
        }
        if all(outcomes[via].processed >= sent.get(via, 0) for via in outcomes):
            return outcomes
        if time.monotonic() > deadline:
            return outcomes
        time.sleep(0.5)


def _clinician_token(settings: Settings, api_url: str, ward: Ward) -> str:
    """A care team of the whole load-test ward, and a token of its clinician."""
    sign = token_signer(settings)
    if sign is None:
        raise SystemExit("clinician users need HS256 tokens (RPMSTORE_JWT_ALGORITHM=HS256)")
    with httpx2.Client(base_url=api_url, timeout=30.0, trust_env=False) as client:
        team = create_care_team(
            client, sign("loadtest-admin", ["admin"], []), ward.patients, LOADTEST_CLINICIAN
        )
    return sign(LOADTEST_CLINICIAN, ["clinician"], [team])


# Long on purpose: one scripted scenario read top to bottom (set up, measure the baseline
# and the subject in the same run, report), where the order of the steps is the method.
def run(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    config = tomllib.loads(CONFIG.read_text())
    profile = config["profile"][args.profile]
    http_devices = args.http_devices or profile["http_devices"]
    mqtt_devices = args.mqtt_devices or profile["mqtt_devices"]
    rate = args.rate or profile["payloads_per_s"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    urls = stack.urls(settings)
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        # Every patient has at least two devices (oximeter and cuff).
        patients = max(http_devices, mqtt_devices) + 1
        ward = register_ward(
            conn, patients=patients, rng=np.random.default_rng(args.seed), now=datetime.now(UTC)
        )
        marker = _scalar(conn, queries("simulate")["batch_marker"])
    devices = stack.sync_broker_devices(settings)  # what `rpmstore broker sync` does
    log.info("broker accounts synced", extra={"devices": devices})
    http_fleet, mqtt_fleet = split_devices(ward, http_devices, mqtt_devices)
    broker = parse_broker_url(urls.mqtt_url, allow_plaintext=settings.mqtt_allow_plaintext)
    fleet = Fleet(
        ward,
        http_fleet,
        mqtt_fleet,
        broker.host,
        broker.port,
        Shares(retry=config["traffic"]["retry_share"], late=config["traffic"]["late_share"], bad=0),
        rate,
        mqtt_tls=broker.tls,
        mqtt_cafile=broker.cafile,
    )
    fleet_path = out / "fleet.pickle"
    fleet.save(fleet_path)
    sent_path = out / "sent.json"
    sent_path.unlink(missing_ok=True)

    api_url = f"http://127.0.0.1:{free_port()}"
    env = {**child_env(urls), "RPMSTORE_MQTT_CLIENT_ID": INGEST_CLIENT_ID}
    users = http_devices + mqtt_devices + int(profile.get("clinicians", 0))
    with ExitStack() as servers:
        servers.callback(forget_session, urls.mqtt_url, INGEST_CLIENT_ID)
        ingestor = servers.enter_context(child(["ingest", "mqtt"], env=env, log_dir=out))
        api = servers.enter_context(
            child(
                [
                    "serve",
                    "--port",
                    api_url.rsplit(":", 1)[1],
                    "--workers",
                    str(profile["api_workers"]),
                ],
                env=env,
                log_dir=out,
            )
        )
        wait_ready(ingestor, api, api_url)
        clinician_token = _clinician_token(settings, api_url, ward)
        locust_env = {
            **os.environ,
            "RPMSTORE_LOADTEST_CLINICIAN_TOKEN": clinician_token,
            "RPMSTORE_LOADTEST_CLINICIANS": str(profile.get("clinicians", 0)),
            "RPMSTORE_LOADTEST_FLEET": str(fleet_path),
            "RPMSTORE_LOADTEST_SENT": str(sent_path),
            "RPMSTORE_LOADTEST_RATE": str(rate),
            "RPMSTORE_LOADTEST_HTTP_DEVICES": str(http_devices),
            "RPMSTORE_LOADTEST_MQTT_DEVICES": str(mqtt_devices),
            "PYTHONPATH": str(HERE.parent),
        }
        command = [
            sys.executable, "-m", "locust",
            "-f", str(LOCUSTFILE),
            "--headless",
            "--users", str(users),
            "--spawn-rate", str(profile["spawn_rate"]),
            "--run-time", f"{int(args.duration)}s",
            "--host", api_url,
            "--csv", str(out / "locust"),
            "--html", str(out / "report.html"),
            "--stop-timeout", "35",
            "--only-summary",
            "--loglevel", "WARNING",
        ]  # fmt: skip
        with (out / "locust.log").open("wb") as locust_log:
            locust = subprocess.Popen(
                command, env=locust_env, stdout=locust_log, stderr=subprocess.STDOUT
            )
            sampler = CpuSampler(
                {
                    "locust": psutil.Process(locust.pid),
                    "api": psutil.Process(api.process.pid),
                    "ingestor": psutil.Process(ingestor.process.pid),
                }
            )
            sampler.start()
            locust_status = locust.wait()
            sampler.stop()
        with psycopg.connect(urls.database_url, autocommit=True) as conn:
            report: dict[str, float] = (
                json.loads(sent_path.read_text()) if sent_path.exists() else {}
            )
            sent = {
                key: int(report.get(key, 0))
                for key in ("http", "mqtt", "http_attempted", "mqtt_attempted")
            }
            outcomes = wait_processed(conn, marker, ward.device_ids, sent)
            if "spawned_at" not in report or "stopping_at" not in report:
                sys.stderr.write((out / "locust.log").read_text()[-3000:])
                return 2
            # The steady state: from every user running to the end of the run time (Locust's
            # clock; the database runs on this machine, so its commit times compare).
            rows = throughput(
                conn,
                marker,
                datetime.fromtimestamp(report["spawned_at"], UTC),
                datetime.fromtimestamp(report["stopping_at"], UTC),
            )
    if locust_status not in (0, 1):  # 1: requests failed, judged below
        sys.stderr.write((out / "locust.log").read_text()[-3000:])
        return 2

    endpoints = read_locust_stats(out / "locust_stats.csv")
    cpu = sampler.summary()
    problems = judge(endpoints, cpu, config["slo"])
    for via, outcome in outcomes.items():
        acked, attempted = sent[via], sent[f"{via}_attempted"]
        if not acked <= outcome.processed <= attempted:
            problems.append(
                f"{via}: ingest accounts for {outcome.processed} readings (stored + duplicates + "
                f"quarantined); {acked} were acknowledged to devices, {attempted} sent"
            )
    min_decay = config["slo"]["soak_min_decay_ratio"]
    if args.profile == "soak" and not rows.decay_ratio >= min_decay:
        problems.append(f"decay ratio {rows.decay_ratio:.2f} < objective {min_decay}")
    summary = {
        "profile": args.profile,
        "duration_s": args.duration,
        "devices": {"http": http_devices, "mqtt": mqtt_devices, "payloads_per_s_each": rate},
        "endpoints": [asdict(e) for e in endpoints],
        "cpu_core_percent": cpu,
        "sent_readings": sent,
        "database": {via: asdict(o) | {"processed": o.processed} for via, o in outcomes.items()},
        "throughput": asdict(rows) | {"decay_ratio": round(rows.decay_ratio, 3)},
        "problems": problems,
        "passed": not problems,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary, endpoints))
    sys.stdout.write((out / "summary.md").read_text())
    return 0 if not problems else 1


def summary_markdown(summary: Mapping[str, Any], endpoints: list[EndpointStats]) -> str:
    lines = [
        f"# rpmstore load test ({summary['profile']}, {summary['duration_s']:.0f} s)",
        "",
        "| type | endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {e.kind} | {e.name} | {e.requests} | {e.failures} | {e.requests_per_s:.1f} | "
        f"{e.median_ms:.0f} | {e.p95_ms:.0f} | {e.p99_ms:.0f} |"
        for e in endpoints
    ]
    rows = summary["throughput"]
    lines += [
        "",
        f"Stored by ingest (database): {rows['rows']} rows in {rows['run_s']} s = "
        f"{rows['rows_per_s']} rows/s; first 10 % {rows['first_10pct_rows_per_s']} rows/s, "
        f"last 10 % {rows['last_10pct_rows_per_s']} rows/s, decay ratio {rows['decay_ratio']}.",
        "",
        "CPU (% of one core, mean / max over 5 s): "
        + ", ".join(
            f"{name} {c['mean_core_percent']} / {c['max_5s_core_percent']}"
            for name, c in summary["cpu_core_percent"].items()
        ),
        "",
        "Result: "
        + (
            "passed"
            if summary["passed"]
            else "FAILED\n" + "\n".join(f"- {p}" for p in summary["problems"])
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__)
    parser.add_argument("--profile", choices=("short", "soak"), default="short")
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 60s, 30m")
    parser.add_argument("--http-devices", type=int, default=None)
    parser.add_argument("--mqtt-devices", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="payloads/s per device")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--out", type=Path, default=OUT)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
