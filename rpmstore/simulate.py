"""``rpmstore simulate``: a simulated ward sending vitals to rpmstore over HTTP or MQTT.

The run registers the ward (patients, devices, assignments from an hour ago), sends about
``rate`` readings per second for ``seconds`` seconds (live readings, exact retries of earlier
payloads, late readings and bad payloads, in the configured shares), waits until the database
shows that everything delivered has been processed, and reports what was sent against what the
database recorded: every reading sent must be stored, a recognised duplicate, or quarantined.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import numpy as np
import psycopg

from rpmstore.simulate_send import Delivery, HttpSender, MqttSender, Sender
from rpmstore.simulate_ward import (
    EXPECTED_REASON,
    Episode,
    Shares,
    TrafficPlan,
    Ward,
    plan_episodes,
    register_ward,
)
from schema.sql import queries

log = logging.getLogger(__name__)

Via = Literal["http", "mqtt"]
DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
_TICK_S: Final = 0.005  # pacing granularity: fine enough for thousands of readings a second
_POLL_S: Final = 0.2


def _q(name: str) -> str:
    return queries("simulate")[name]


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; the defaults are a small ward for a quick look."""

    patients: int = 5
    rate: float = 100.0  # readings per second, all devices together
    seconds: float = 10.0
    via: Via = "http"
    seed: int | None = None  # None: a fresh seed, printed in the report
    shares: Shares = field(default_factory=Shares)
    concurrency: int = 32  # HTTP requests in flight
    wait_s: float = 30.0  # bound on waiting for answers, PUBACKs and the database


@dataclass(frozen=True)
class Endpoints:
    """Where to send: the database (registration, outcome) and the transport's server."""

    database_url: str
    api_url: str = DEFAULT_API_URL
    mqtt_url: str | None = None  # an account that may publish for every device (the gateway)
    mqtt_allow_plaintext: bool = False  # plain mqtt:// off loopback (ingest/transport.py)


@dataclass(frozen=True)
class Traffic:
    """What the ward sent, by category (payloads and readings), as planned."""

    payloads: Counter[str]
    readings: Counter[str]
    bad_reasons: Counter[str]  # the quarantine reason each bad payload must get
    send_s: float  # the sending window (about --seconds)

    @property
    def total_readings(self) -> int:
        return sum(self.readings.values())


@dataclass(frozen=True)
class DatabaseOutcome:
    """What the database recorded for the simulation's batches."""

    batches: int
    stored: int
    duplicates: int
    conflicts: int
    quarantine_rows: int  # from the batch rows (any device, this source)
    quarantined: Mapping[str, int]  # by reason, the ward's devices only
    ward_rows: int  # rows of the ward's devices in rpm.readings

    @property
    def processed(self) -> int:
        return self.stored + self.duplicates + self.quarantine_rows


@dataclass(frozen=True)
class SimulationReport:
    """One run: what was planned and sent, what the transport said, what the database holds."""

    config: SimulationConfig
    seed: int
    ward: Ward
    episodes: tuple[Episode, ...]
    traffic: Traffic
    delivery: Delivery
    database: DatabaseOutcome
    complete: bool  # the database accounted for every delivered reading within the wait

    @property
    def rate(self) -> float:
        return self.traffic.total_readings / self.traffic.send_s if self.traffic.send_s else 0.0

    @property
    def accounted(self) -> bool:
        """Stored + duplicates + quarantined equals the readings delivered (give or take the
        readings re-sent after an attempt of unknown fate, which can only add duplicates),
        and nothing was lost on the way (every payload answered or acknowledged)."""
        delivered = self.delivery.delivered_readings
        return (
            self.complete
            and self.delivery.undelivered_payloads == 0
            and delivered <= self.database.processed <= delivered + self.delivery.uncertain_readings
        )


@dataclass(frozen=True)
class _Prepared:
    ward: Ward
    episodes: tuple[Episode, ...]
    plan: TrafficPlan
    after_batch: int  # the newest ingest batch before anything was sent


def run_simulation(config: SimulationConfig, endpoints: Endpoints) -> SimulationReport:
    """Register a ward, send its traffic, wait for the outcome and report it."""
    seed = config.seed if config.seed is not None else secrets.randbits(32)
    rng = np.random.default_rng(seed)
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:

        def prepare() -> _Prepared:
            started = datetime.now(UTC)
            ward = register_ward(conn, patients=config.patients, rng=rng, now=started)
            episodes = plan_episodes(
                rng, patients=config.patients, start=started, seconds=config.seconds
            )
            plan = TrafficPlan(ward, rng, shares=config.shares, episodes=episodes)
            return _Prepared(ward, episodes, plan, _scalar(conn, _q("batch_marker"), {}))

        prepared, traffic, delivery = asyncio.run(_send(config, endpoints, prepare))
        database, complete = wait_for_outcome(
            conn,
            source=config.via,
            after_batch=prepared.after_batch,
            device_ids=prepared.ward.device_ids,
            expected=delivery.delivered_readings,
            timeout=config.wait_s,
        )
    report = SimulationReport(
        config, seed, prepared.ward, prepared.episodes, traffic, delivery, database, complete
    )
    log.info(
        "simulation finished",
        extra={
            "via": config.via,
            "readings": traffic.total_readings,
            "accounted": report.accounted,
        },
    )
    return report


def _sender(config: SimulationConfig, endpoints: Endpoints) -> HttpSender | MqttSender:
    if config.via == "http":
        return HttpSender(endpoints.api_url, concurrency=config.concurrency)
    if endpoints.mqtt_url is None:
        raise ValueError("an MQTT URL of an account that may publish for every device is needed")
    return MqttSender(endpoints.mqtt_url, allow_plaintext=endpoints.mqtt_allow_plaintext)


async def _send(
    config: SimulationConfig, endpoints: Endpoints, prepare: Callable[[], _Prepared]
) -> tuple[_Prepared, Traffic, Delivery]:
    # The ward is registered only once the server has answered, so an unreachable API or
    # broker leaves no simulated patients behind.
    async with _sender(config, endpoints) as sender:
        prepared = await asyncio.to_thread(prepare)
        traffic = await _paced(sender, prepared.plan, rate=config.rate, seconds=config.seconds)
        await sender.finish(config.wait_s)
        return prepared, traffic, sender.delivery


async def _paced(sender: Sender, plan: TrafficPlan, *, rate: float, seconds: float) -> Traffic:
    """Submit payloads so that readings keep pace with ``rate`` per second for ``seconds``."""
    payloads: Counter[str] = Counter()
    readings: Counter[str] = Counter()
    bad_reasons: Counter[str] = Counter()
    sent = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        # Catch up to where the rate says we should be, but never past the end: when the
        # server cannot keep up (submit waits for a free slot), the achieved rate shows it.
        while sent < rate * elapsed and time.monotonic() - start < seconds:
            payload = plan.next_payload(datetime.now(UTC))
            await sender.submit(payload)
            payloads[payload.category] += 1
            readings[payload.category] += payload.readings
            if payload.bad_kind is not None:
                bad_reasons[EXPECTED_REASON[payload.bad_kind]] += 1
            sent += payload.readings
        await asyncio.sleep(_TICK_S)
    return Traffic(payloads, readings, bad_reasons, time.monotonic() - start)


def _scalar(conn: psycopg.Connection, statement: str, params: Mapping[str, object]) -> int:
    row = conn.execute(statement, params).fetchone()
    assert row is not None  # aggregates always return a row
    return int(row[0])


def database_outcome(
    conn: psycopg.Connection, *, source: Via, after_batch: int, device_ids: list[uuid.UUID]
) -> DatabaseOutcome:
    """What ingest recorded for ``source`` in the batches after ``after_batch``."""
    params = {
        "source": source,
        "after_batch": after_batch,
        "device_ids": [str(d) for d in device_ids],
    }
    totals = conn.execute(_q("batch_totals"), params).fetchone()
    assert totals is not None
    reasons = conn.execute(_q("quarantine_by_reason"), params).fetchall()
    ward_rows = _scalar(
        conn, _q("ward_rows"), {"device_ids": device_ids, "after_batch": after_batch}
    )
    batches, stored, duplicates, conflicts, quarantine_rows = (int(v) for v in totals)
    return DatabaseOutcome(
        batches,
        stored,
        duplicates,
        conflicts,
        quarantine_rows,
        {str(reason): int(count) for reason, count in reasons},
        ward_rows,
    )


def wait_for_outcome(
    conn: psycopg.Connection,
    *,
    source: Via,
    after_batch: int,
    device_ids: list[uuid.UUID],
    expected: int,
    timeout: float,
) -> tuple[DatabaseOutcome, bool]:
    """Poll until the batches account for ``expected`` readings (bounded by ``timeout``).

    Over HTTP every answer came after COMMIT, so the first look suffices; over MQTT a PUBACK
    only means the broker has the message, and the ingestor may still be writing.
    """
    deadline = time.monotonic() + timeout
    while True:
        outcome = database_outcome(
            conn, source=source, after_batch=after_batch, device_ids=device_ids
        )
        if outcome.processed >= expected:
            return outcome, True
        if time.monotonic() > deadline:
            log.warning(
                "ingest has not processed everything sent",
                extra={"expected": expected, "processed": outcome.processed},
            )
            return outcome, False
        time.sleep(_POLL_S)


@dataclass(frozen=True)
class LatestReading:
    measured_at: datetime
    metric: str
    value: float
    unit: str  # the metric's canonical unit: what every device's unit was converted to
    received_at: datetime


def latest_readings(conn: psycopg.Connection, patient_id: uuid.UUID) -> list[LatestReading]:
    """The patient's newest reading of each metric, as stored in the hypertable."""
    rows = conn.execute(_q("latest_per_metric"), {"patient_id": patient_id}).fetchall()
    return [LatestReading(*row) for row in rows]


def format_report(report: SimulationReport) -> list[str]:
    """The report as lines for a person."""
    config, traffic, delivery, db = report.config, report.traffic, report.delivery, report.database
    via = config.via.upper()
    lines = [
        f"simulated ward over {via}: {len(report.ward.patients)} patients, "
        f"{len(report.ward.devices)} devices, seed {report.seed}",
        f"  sent       {delivery.payloads} payloads, {traffic.total_readings} readings in "
        f"{traffic.send_s:.1f} s = {report.rate:.0f} readings/s (target {config.rate:g})",
        "             of which "
        + ", ".join(f"{traffic.readings[c]} {c}" for c in ("live", "late", "retry", "bad"))
        + " (payloads: "
        + ", ".join(str(traffic.payloads[c]) for c in ("live", "late", "retry", "bad"))
        + ")",
        f"  {'answers' if config.via == 'http' else 'broker':<10} "
        + ", ".join(f"{count} {what}" for what, count in sorted(delivery.transport.items())),
    ]
    if config.via == "http":
        lines.append(
            f"             said: stored {delivery.answered_stored}, duplicates "
            f"{delivery.answered_duplicates}, quarantined "
            f"{sum(delivery.answered_quarantined.values())}"
        )
    quarantined = sum(db.quarantined.values())
    reasons = ", ".join(f"{reason} {count}" for reason, count in db.quarantined.items())
    lines += [
        f"  database   {db.batches} ingest batches: stored {db.stored}, duplicates "
        f"{db.duplicates}, quarantined {quarantined}",
        *([f"             quarantined by reason: {reasons}"] if reasons else []),
        f"             rows of the ward's devices in rpm.readings: {db.ward_rows}",
        f"  accounted  stored + duplicates + quarantined = {db.processed} of "
        f"{delivery.delivered_readings} readings delivered: "
        + ("yes" if report.accounted else "NO" + ("" if report.complete else " (timed out)")),
    ]
    if delivery.uncertain_readings:
        lines.append(
            f"             ({delivery.uncertain_readings} readings were re-sent after an "
            "unanswered attempt; ingest may count them as duplicates)"
        )
    lines += [
        f"  {'episodes' if n == 0 else '':<10} {episode.describe(report.ward)}"
        for n, episode in enumerate(report.episodes)
    ]
    return lines
