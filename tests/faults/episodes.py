"""Abnormal episodes the fault ward sends, and the alerts each must leave.

Two extra patients of the ward, each with a pulse oximeter and a blood-pressure cuff, upload
readings that breach the default alert rules (seeded by migration 0005): a sustained
desaturation, a hypertensive crisis, a short critical desaturation (which must *not* fire the
sustained rule), a hypotensive spell sent as separate systolic and diastolic readings, and a
tachycardia still going on at the newest reading. The devices upload them as a store-and-forward
device does its buffer (oldest first; one oximeter newest first), one measurement per message,
measured in the last hour; the payloads are interleaved with the ward's own traffic, so the
faults hit them like the rest.

These devices send nothing else. Every breach run is bracketed by in-range readings, each
(patient, rule) has at most one run, and a device's readings are evenly spaced, so in whatever
order they arrive the rules' semantics (schema/queries/alerting.sql) leave exactly the alerts
of :attr:`Episode.expected`. (Evenly matters: a gap of minutes after the first reading of a
sustained run, that first reading arriving last, makes today's evaluator miss the whole run.)
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import psycopg

from rpmstore.simulate_ward import MANUFACTURER, MRN_SYSTEM, DeviceKind, PlannedPayload, SimDevice
from schema.registry import PatientIdentity, assign_device, register_device, register_patient

# Default rules of migration 0005 (fixed ids) and catalogue metric ids.
SPO2_BELOW_90_FOR_5_MIN = uuid.UUID("a1e7a000-0000-4000-8000-000000000001")
SPO2_BELOW_85 = uuid.UUID("a1e7a000-0000-4000-8000-000000000002")
HEART_RATE_ABOVE_130_FOR_10_MIN = uuid.UUID("a1e7a000-0000-4000-8000-000000000003")
SYSTOLIC_ABOVE_180 = uuid.UUID("a1e7a000-0000-4000-8000-000000000005")
SYSTOLIC_BELOW_90 = uuid.UUID("a1e7a000-0000-4000-8000-000000000006")
DIASTOLIC_ABOVE_120 = uuid.UUID("a1e7a000-0000-4000-8000-000000000007")

Status = Literal["open", "resolved"]


@dataclass(frozen=True)
class ExpectedAlert:
    """An alert as the rules define it from the episode's readings (all rules auto-resolve)."""

    patient_id: uuid.UUID
    rule_id: uuid.UUID
    first_breach_at: datetime
    last_breach_at: datetime
    breach_count: int
    peak_value: float
    last_value: float
    status: Status


@dataclass(frozen=True)
class Episode:
    name: str
    payloads: tuple[PlannedPayload, ...]
    expected: tuple[ExpectedAlert, ...]
    patient_id: uuid.UUID


@dataclass(frozen=True)
class EpisodePatient:
    patient_id: uuid.UUID
    oximeter: SimDevice
    cuff: SimDevice


def register_episode_patients(
    conn: psycopg.Connection, *, run_id: str, now: datetime, count: int = 2
) -> list[EpisodePatient]:
    """``count`` patients with an oximeter and a cuff each, assigned from two hours ago."""
    patients = []
    for index in range(count):
        mrn = f"SIM-{run_id}-episodes-{index + 1}"
        patient_id = register_patient(
            conn,
            identity=PatientIdentity(given_name="Episode", family_name=f"Patient {mrn}"),
            identifiers=[(MRN_SYSTEM, mrn)],
        )
        oximeter = _device(conn, patient_id, "pulse_oximeter", f"{mrn}-OX", now)
        cuff = _device(conn, patient_id, "bp_cuff", f"{mrn}-BP", now)
        patients.append(EpisodePatient(patient_id, oximeter, cuff))
    return patients


def _device(
    conn: psycopg.Connection, patient_id: uuid.UUID, kind: DeviceKind, serial: str, now: datetime
) -> SimDevice:
    registered = register_device(
        conn, kind=kind, manufacturer=MANUFACTURER, model="EP-1", serial_number=serial
    )
    assign_device(
        conn,
        device_id=registered.device_id,
        patient_id=patient_id,
        valid_from=now - timedelta(hours=2),
    )
    unit = "%" if kind == "pulse_oximeter" else "mm[Hg]"
    return SimDevice(
        registered.device_id, registered.token, kind, -1, serial, unit, False, False, 0
    )


class _Uploads:
    """Builds one device's messages: one measurement each, ids unique per device."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self._sequence = 0

    def message(self, at: datetime, items: Sequence[dict[str, object]]) -> PlannedPayload:
        readings = []
        for item in items:
            self._sequence += 1
            readings.append(
                {
                    **item,
                    "time": at.isoformat(timespec="milliseconds"),
                    "id": f"{self.device.serial}-{self._sequence}",
                }
            )
        body = json.dumps({"device_id": str(self.device.device_id), "readings": readings})
        rows = sum(2 if "systolic" in item else 1 for item in items)
        return PlannedPayload(self.device, body.encode(), rows, "late")


def _times(start: datetime, step: timedelta, count: int) -> list[datetime]:
    return [start + n * step for n in range(count)]


def _oximetry(
    uploads: _Uploads, times: Sequence[datetime], spo2: Sequence[float], pulse: Sequence[float]
) -> list[PlannedPayload]:
    return [
        uploads.message(
            at,
            [
                {"metric": "spo2", "value": s, "unit": "%"},
                {"metric": "heart_rate", "value": p, "unit": "/min"},
            ],
        )
        for at, s, p in zip(times, spo2, pulse, strict=True)
    ]


def _expected(
    patient: EpisodePatient,
    rule_id: uuid.UUID,
    times: Sequence[datetime],
    values: Sequence[float],
    *,
    breaching: slice,
    kind: Literal["above", "below"],
) -> ExpectedAlert:
    """The alert over the breach run ``values[breaching]``; resolved when an in-range reading
    follows it."""
    run_times, run_values = times[breaching], values[breaching]
    resolved = (breaching.stop or len(values)) < len(values)
    return ExpectedAlert(
        patient.patient_id,
        rule_id,
        run_times[0],
        run_times[-1],
        len(run_values),
        max(run_values) if kind == "above" else min(run_values),
        run_values[-1],
        "resolved" if resolved else "open",
    )


def plan_episodes(patients: Sequence[EpisodePatient], now: datetime) -> list[Episode]:
    """The episodes of the two patients, measured in the hour before ``now``."""
    a, b = patients[0], patients[1]
    t0 = now.replace(microsecond=now.microsecond // 1000 * 1000)  # exact on the wire
    half_minute, two_minutes = timedelta(seconds=30), timedelta(minutes=2)
    episodes = []

    # A: SpO2 86-89 % for 6 minutes: "below 90 % for 5 minutes" fires (not "below 85 %").
    oximeter_a = _Uploads(a.oximeter)
    times = _times(t0 - timedelta(minutes=50), half_minute, 17)
    spo2 = [96.0, 95.0, 89.0, 88.0, 87.0, 86.0, 87.0, 88.0, 89.0, 88.0, 87.0, 86.0, 88.0, 89.0,
            87.0, 95.0, 96.0]  # fmt: skip
    pulse = [78.0 + n % 5 for n in range(len(times))]
    episodes.append(
        Episode(
            "sustained desaturation",
            # This oximeter uploads its buffer newest first: the run's qualifying readings
            # arrive before its start, so the alert opens late and grows backwards.
            tuple(reversed(_oximetry(oximeter_a, times, spo2, pulse))),
            (
                _expected(
                    a, SPO2_BELOW_90_FOR_5_MIN, times, spo2, breaching=slice(2, 15), kind="below"
                ),
            ),
            a.patient_id,
        )
    )

    # A: a hypertensive crisis, three panels 2 minutes apart: systolic > 180, diastolic > 120.
    cuff_a = _Uploads(a.cuff)
    times = _times(t0 - timedelta(minutes=30), two_minutes, 5)
    systolic = [138.0, 186.0, 195.0, 182.0, 141.0]
    diastolic = [86.0, 121.0, 126.0, 118.0, 88.0]
    panels = [
        cuff_a.message(
            at, [{"metric": "blood_pressure", "systolic": s, "diastolic": d, "unit": "mm[Hg]"}]
        )
        for at, s, d in zip(times, systolic, diastolic, strict=True)
    ]
    episodes.append(
        Episode(
            "hypertensive crisis",
            tuple(panels),
            (
                _expected(
                    a, SYSTOLIC_ABOVE_180, times, systolic, breaching=slice(1, 4), kind="above"
                ),
                _expected(
                    a, DIASTOLIC_ABOVE_120, times, diastolic, breaching=slice(1, 3), kind="above"
                ),
            ),
            a.patient_id,
        )
    )

    # B: SpO2 82-84 % for one minute: "below 85 %" fires; "below 90 % for 5 minutes" must not.
    oximeter_b = _Uploads(b.oximeter)
    times = _times(t0 - timedelta(minutes=45), half_minute, 7)
    spo2 = [97.0, 96.0, 84.0, 82.0, 83.0, 95.0, 97.0]
    pulse = [72.0, 74.0, 96.0, 101.0, 99.0, 80.0, 75.0]
    episodes.append(
        Episode(
            "short critical desaturation",
            tuple(_oximetry(oximeter_b, times, spo2, pulse)),
            (_expected(b, SPO2_BELOW_85, times, spo2, breaching=slice(2, 5), kind="below"),),
            b.patient_id,
        )
    )

    # B: systolic 82-88 mm[Hg], sent as separate systolic and diastolic readings.
    cuff_b = _Uploads(b.cuff)
    times = _times(t0 - timedelta(minutes=40), two_minutes, 4)
    systolic = [118.0, 86.0, 82.0, 112.0]
    diastolic = [74.0, 52.0, 50.0, 70.0]
    parts = [
        cuff_b.message(
            at,
            [
                {"metric": "bp_systolic", "value": s, "unit": "mm[Hg]"},
                {"metric": "bp_diastolic", "value": d, "unit": "mm[Hg]"},
            ],
        )
        for at, s, d in zip(times, systolic, diastolic, strict=True)
    ]
    episodes.append(
        Episode(
            "hypotension",
            tuple(parts),
            (
                _expected(
                    b, SYSTOLIC_BELOW_90, times, systolic, breaching=slice(1, 3), kind="below"
                ),
            ),
            b.patient_id,
        )
    )

    # B: pulse 135-150 /min for 11 minutes up to the newest reading: "above 130 /min for 10
    # minutes" fires and stays open.
    times = _times(t0 - timedelta(minutes=13), half_minute, 25)
    spo2 = [95.0 + n % 3 for n in range(len(times))]
    pulse = [84.0, 88.0, *(135.0 + (n * 7) % 16 for n in range(23))]
    episodes.append(
        Episode(
            "tachycardia, still going",
            tuple(_oximetry(oximeter_b, times, spo2, pulse)),
            (
                _expected(
                    b,
                    HEART_RATE_ABOVE_130_FOR_10_MIN,
                    times,
                    pulse,
                    breaching=slice(2, None),
                    kind="above",
                ),
            ),
            b.patient_id,
        )
    )
    return episodes


def interleave(ward: Sequence[PlannedPayload], episodes: Sequence[Episode]) -> list[PlannedPayload]:
    """The ward's payloads with the episodes' spread evenly among them, each device's in its
    upload order."""
    by_device: dict[uuid.UUID, list[PlannedPayload]] = {}
    for episode in episodes:
        for payload in episode.payloads:
            by_device.setdefault(payload.device.device_id, []).append(payload)
    extra = list(_round_robin(list(by_device.values())))
    if not ward:
        return extra
    mixed: list[PlannedPayload] = []
    for n, payload in enumerate(ward):
        mixed.append(payload)
        # After ward payload n, the episode payloads due by then (evenly spread).
        while len(mixed) - n - 1 < len(extra) * (n + 1) // len(ward):
            mixed.append(extra[len(mixed) - n - 1])
    mixed.extend(extra[len(mixed) - len(ward) :])
    return mixed


def _round_robin(queues: list[list[PlannedPayload]]) -> Iterator[PlannedPayload]:
    while any(queues):
        for queue in queues:
            if queue:
                yield queue.pop(0)


def reading_keys(payloads: Iterable[PlannedPayload]) -> Counter[tuple[str, str]]:
    """(device id, client reading id) of every row the payloads should store; a BP panel
    stores two rows, ``<id>:systolic`` and ``<id>:diastolic``."""
    keys: Counter[tuple[str, str]] = Counter()
    for payload in payloads:
        device = str(payload.device.device_id)
        for item in json.loads(payload.body)["readings"]:
            if "systolic" in item:
                keys[(device, f"{item['id']}:systolic")] += 1
                keys[(device, f"{item['id']}:diastolic")] += 1
            else:
                keys[(device, item["id"])] += 1
    return keys
