"""The simulated ward: patients, their devices, and what those devices put on the wire.

Every patient has a pulse oximeter (SpO2 and heart rate) and a blood-pressure cuff; some also
have a continuous glucose monitor, a scale and a thermometer. Devices differ the way real fleets
do: some report glucose in mmol/L, weight in [lb_av] or temperature in [degF]; some name metrics
by LOINC code, some send epoch milliseconds instead of RFC 3339 times with their UTC offset.

All randomness comes from one numpy ``Generator``: a seed reproduces the ward and the sequence of
decisions (which device sends, which payload is a retry, late or bad). Measurement times come from
the wall clock, so they differ between runs.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal

import numpy as np
import psycopg

from schema.registry import (
    PatientIdentity,
    RegisteredDevice,
    assign_device,
    register_device,
    register_patient,
)

log = logging.getLogger(__name__)

MRN_SYSTEM: Final = "urn:rpmstore:simulator:mrn"
MANUFACTURER: Final = "Acme Ward Sim"
# Assignments start this long before registration, so late readings are still attributable.
ASSIGNED_FOR: Final = timedelta(hours=1)
# Late readings are measured this long before they are sent (inside the assignment period).
LATE_MIN_S: Final = 120.0
LATE_MAX_S: Final = 55 * 60.0

DeviceKind = Literal["pulse_oximeter", "bp_cuff", "glucose_meter", "scale", "thermometer"]
Category = Literal["live", "late", "retry", "bad"]
EpisodeKind = Literal["desaturation", "hypertension"]
BadKind = Literal["truncated_json", "unknown_metric", "out_of_range", "wrong_unit"]
BAD_KINDS: Final[tuple[BadKind, ...]] = (
    "truncated_json",
    "unknown_metric",
    "out_of_range",
    "wrong_unit",
)
# The quarantine reason ingest must give each kind of bad payload (ingest/validation.py).
EXPECTED_REASON: Final[dict[BadKind, str]] = {
    "truncated_json": "malformed_json",
    "unknown_metric": "unknown_metric",
    "out_of_range": "out_of_range",
    "wrong_unit": "unconvertible_unit",
}

# How often each kind of device sends, relative to the oximeter (spot checks are rarer).
_SEND_WEIGHT: Final[dict[DeviceKind, float]] = {
    "pulse_oximeter": 1.0,
    "bp_cuff": 0.2,
    "glucose_meter": 0.4,
    "scale": 0.05,
    "thermometer": 0.15,
}
# The units devices of each kind report in; a ward alternates between them.
_UNITS: Final[dict[DeviceKind, tuple[str, ...]]] = {
    "pulse_oximeter": ("%",),
    "bp_cuff": ("mm[Hg]",),
    "glucose_meter": ("mg/dL", "mmol/L"),
    "scale": ("kg", "[lb_av]"),
    "thermometer": ("Cel", "[degF]"),
}
_MODELS: Final[dict[DeviceKind, tuple[str, ...]]] = {
    "pulse_oximeter": ("OX-1", "OX-2 Bluetooth"),
    "bp_cuff": ("BP-2", "BP-3 Cellular"),
    "glucose_meter": ("CGM-14",),
    "scale": ("SC-200",),
    "thermometer": ("TH-5",),
}
# Catalogue code and LOINC code of each metric a device sends (CLINICAL-CODES.md).
_CODES: Final[dict[str, tuple[str, str]]] = {
    "spo2": ("spo2", "59408-5"),
    "heart_rate": ("heart_rate", "8867-4"),
    "blood_pressure": ("blood_pressure", "85354-9"),
    "bp_systolic": ("bp_systolic", "8480-6"),
    "bp_diastolic": ("bp_diastolic", "8462-4"),
    "glucose_cgm": ("glucose_cgm", "99504-3"),
    "body_weight": ("body_weight", "29463-7"),
    "body_temperature": ("body_temperature", "8310-5"),
}
# The one scalar metric of each kind that bad payloads are made from.
_PRIMARY_METRIC: Final[dict[DeviceKind, str]] = {
    "pulse_oximeter": "spo2",
    "bp_cuff": "bp_systolic",
    "glucose_meter": "glucose_cgm",
    "scale": "body_weight",
    "thermometer": "body_temperature",
}
# Metric names a confused firmware might send; none is in the catalogue.
_UNKNOWN_METRICS: Final = ("perfusion_index", "spo2_avg", "8310-6", "blood_ketones")
# A unit with no conversion to the metric's canonical unit (kPa for blood pressure is real).
_WRONG_UNIT: Final[dict[DeviceKind, str]] = {
    "pulse_oximeter": "/min",
    "bp_cuff": "kPa",
    "glucose_meter": "mg/L",
    "scale": "[stone_av]",
    "thermometer": "K",
}
# A sensor glitch beyond the catalogue's plausible range, in the device's own unit.
_OUT_OF_RANGE: Final[dict[str, float]] = {
    "%": 127.0,
    "mm[Hg]": 420.0,
    "mg/dL": 1500.0,
    "mmol/L": 95.0,
    "kg": 650.0,
    "[lb_av]": 1400.0,
    "Cel": 52.0,
    "[degF]": 126.0,
}
# Optional devices and the share of patients (after the first, who has all) that have one.
_OPTIONAL_KINDS: Final[tuple[tuple[DeviceKind, float], ...]] = (
    ("glucose_meter", 0.4),
    ("scale", 0.5),
    ("thermometer", 0.5),
)
_EPISODE_KINDS: Final[tuple[EpisodeKind, ...]] = ("desaturation", "hypertension")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MMOL_PER_MG_DL: Final = 1 / 18.016
_LB_PER_KG: Final = 1 / 0.45359237


@dataclass(frozen=True)
class Baseline:
    """A patient's usual vital signs (canonical units)."""

    spo2: float
    heart_rate: float
    systolic: float
    diastolic: float
    glucose: float  # mg/dL
    glucose_phase: float  # radians: where in the slow glucose swing the patient is
    weight_kg: float
    temperature_c: float


@dataclass(frozen=True)
class SimPatient:
    patient_id: uuid.UUID
    mrn: str
    baseline: Baseline


@dataclass(frozen=True)
class SimDevice:
    device_id: uuid.UUID
    token: str  # the device's bearer token (HTTP)
    kind: DeviceKind
    patient: int  # index into Ward.patients
    serial: str
    unit: str  # the unit this device reports in
    loinc_codes: bool  # names metrics by LOINC code rather than catalogue code
    epoch_ms: bool  # sends epoch milliseconds rather than RFC 3339
    utc_offset_minutes: int  # the offset its RFC 3339 times carry

    @property
    def topic(self) -> str:
        return f"rpm/v1/devices/{self.device_id}/readings"


@dataclass(frozen=True)
class Episode:
    """A stretch of abnormal vitals for one patient, in measurement time."""

    patient: int
    kind: EpisodeKind
    start: datetime
    end: datetime

    def covers(self, patient: int, at: datetime) -> bool:
        return patient == self.patient and self.start <= at < self.end

    def describe(self, ward: Ward) -> str:
        what = "SpO2 86-89 %" if self.kind == "desaturation" else "BP 165-185/100-112 mm[Hg]"
        return (
            f"{ward.patients[self.patient].mrn}: {what} "
            f"{self.start:%H:%M:%S}-{self.end:%H:%M:%S} UTC"
        )


@dataclass(frozen=True)
class Ward:
    run_id: str
    registered_at: datetime
    patients: tuple[SimPatient, ...]
    devices: tuple[SimDevice, ...]

    @property
    def device_ids(self) -> list[uuid.UUID]:
        return [d.device_id for d in self.devices]


@dataclass(frozen=True)
class PlannedPayload:
    """One message or request body, ready to send."""

    device: SimDevice
    body: bytes
    # In stored-row units: a BP panel counts two (it is stored as two rows); a bad payload
    # counts one, the one quarantine row it produces.
    readings: int
    category: Category
    bad_kind: BadKind | None = None


@dataclass(frozen=True)
class Shares:
    """Fractions of payloads that are retries, late or bad (the rest are live)."""

    retry: float = 0.03
    late: float = 0.05
    bad: float = 0.02


def _draw_baseline(rng: np.random.Generator) -> Baseline:
    return Baseline(
        spo2=float(np.clip(rng.normal(97.0, 1.0), 94.0, 99.0)),
        heart_rate=float(np.clip(rng.normal(74.0, 8.0), 55.0, 100.0)),
        systolic=float(np.clip(rng.normal(126.0, 10.0), 100.0, 150.0)),
        diastolic=float(np.clip(rng.normal(79.0, 7.0), 60.0, 95.0)),
        glucose=float(np.clip(rng.normal(125.0, 20.0), 85.0, 180.0)),
        glucose_phase=float(rng.uniform(0.0, 2 * math.pi)),
        weight_kg=float(np.clip(rng.normal(78.0, 14.0), 45.0, 140.0)),
        temperature_c=float(np.clip(rng.normal(36.8, 0.25), 36.2, 37.4)),
    )


def _device_kinds(rng: np.random.Generator, index: int) -> list[DeviceKind]:
    """Everyone has an oximeter and a cuff; the first patient has every kind (so a small ward
    still shows each), the others a CGM, scale or thermometer at random."""
    kinds: list[DeviceKind] = ["pulse_oximeter", "bp_cuff"]
    for kind, probability in _OPTIONAL_KINDS:
        # Drawn for the first patient too, so the draws do not depend on the index.
        if rng.random() < probability or index == 0:
            kinds.append(kind)
    return kinds


def register_ward(
    conn: psycopg.Connection, *, patients: int, rng: np.random.Generator, now: datetime
) -> Ward:
    """Register ``patients`` patients with their devices, assigned from an hour before ``now``."""
    run_id = uuid.uuid4().hex[:8]
    kind_counts: dict[DeviceKind, int] = dict.fromkeys(_UNITS, 0)
    sim_patients: list[SimPatient] = []
    devices: list[SimDevice] = []
    for index in range(patients):
        mrn = f"SIM-{run_id}-{index + 1}"
        patient_id = register_patient(
            conn,
            identity=PatientIdentity(given_name="Ward", family_name=f"Patient {mrn}"),
            identifiers=[(MRN_SYSTEM, mrn)],
        )
        sim_patients.append(SimPatient(patient_id, mrn, _draw_baseline(rng)))
        for kind in _device_kinds(rng, index):
            number = kind_counts[kind]
            kind_counts[kind] += 1
            device = _register_device(conn, rng, kind=kind, number=number, run_id=run_id)
            assign_device(
                conn,
                device_id=device.device_id,
                patient_id=patient_id,
                valid_from=now - ASSIGNED_FOR,
            )
            devices.append(_sim_device(rng, device, kind, index, number, run_id))
    log.info(
        "simulated ward registered",
        extra={"run_id": run_id, "patients": patients, "devices": len(devices)},
    )
    return Ward(run_id, now, tuple(sim_patients), tuple(devices))


def _register_device(
    conn: psycopg.Connection,
    rng: np.random.Generator,
    *,
    kind: DeviceKind,
    number: int,
    run_id: str,
) -> RegisteredDevice:
    models = _MODELS[kind]
    return register_device(
        conn,
        kind=kind,
        manufacturer=MANUFACTURER,
        model=models[int(rng.integers(len(models)))],
        serial_number=f"{kind[:3].upper()}-{run_id}-{number + 1}",
    )


def _sim_device(
    rng: np.random.Generator,
    registered: RegisteredDevice,
    kind: DeviceKind,
    patient: int,
    number: int,
    run_id: str,
) -> SimDevice:
    units = _UNITS[kind]
    return SimDevice(
        device_id=registered.device_id,
        token=registered.token,
        kind=kind,
        patient=patient,
        serial=f"{kind[:3].upper()}-{run_id}-{number + 1}",
        unit=units[number % len(units)],  # alternate, so even a small ward mixes units
        loinc_codes=bool(rng.random() < 0.3),
        epoch_ms=bool(rng.random() < 0.3),
        utc_offset_minutes=int(rng.choice([0, 60, 120, -300])),
    )


def plan_episodes(
    rng: np.random.Generator, *, patients: int, start: datetime, seconds: float
) -> tuple[Episode, ...]:
    """A desaturation for one patient and a hypertensive spell for another, each lasting 3 to
    5 minutes and centred on a random moment of the run (so a short run sits inside them)."""
    episodes = []
    chosen = [int(p) for p in rng.permutation(patients)[: len(_EPISODE_KINDS)]]
    for patient, kind in zip(chosen, _EPISODE_KINDS, strict=False):  # one patient: one episode
        duration = timedelta(minutes=float(rng.uniform(3.0, 5.0)))
        centre = start + timedelta(seconds=float(rng.uniform(0.0, seconds)))
        episodes.append(Episode(patient, kind, centre - duration / 2, centre + duration / 2))
    return tuple(episodes)


class Vitals:
    """Plausible values for a patient at a time: baseline, slow drift, noise and episodes."""

    def __init__(self, rng: np.random.Generator, episodes: tuple[Episode, ...]) -> None:
        self._rng = rng
        self._episodes = episodes

    def _in(self, kind: str, patient: int, at: datetime) -> bool:
        return any(e.kind == kind and e.covers(patient, at) for e in self._episodes)

    def spo2(self, patient: int, baseline: Baseline, at: datetime) -> float:
        if self._in("desaturation", patient, at):
            return float(self._rng.integers(86, 90))
        return float(np.clip(np.round(self._rng.normal(baseline.spo2, 0.8)), 92, 100))

    def heart_rate(self, patient: int, baseline: Baseline, at: datetime) -> float:
        # Hypoxaemia drives the heart rate up: the two signals move together.
        extra = 18.0 if self._in("desaturation", patient, at) else 0.0
        return float(np.clip(np.round(self._rng.normal(baseline.heart_rate + extra, 4.0)), 40, 180))

    def blood_pressure(self, patient: int, baseline: Baseline, at: datetime) -> tuple[float, float]:
        if self._in("hypertension", patient, at):
            return float(self._rng.integers(165, 186)), float(self._rng.integers(100, 113))
        systolic = np.round(self._rng.normal(baseline.systolic, 6.0))
        diastolic = np.round(self._rng.normal(baseline.diastolic, 4.0))
        return float(systolic), float(min(diastolic, systolic - 25))

    def glucose_mg_dl(self, baseline: Baseline, at: datetime) -> float:
        # A slow swing over about three hours (meals, insulin), plus sensor noise.
        hours = at.timestamp() / 3600.0
        swing = 30.0 * math.sin(2 * math.pi * hours / 3.0 + baseline.glucose_phase)
        return float(np.clip(np.round(baseline.glucose + swing + self._rng.normal(0, 4)), 40, 400))

    def weight_kg(self, baseline: Baseline) -> float:
        return float(self._rng.normal(baseline.weight_kg, 0.2))

    def temperature_c(self, baseline: Baseline) -> float:
        return float(self._rng.normal(baseline.temperature_c, 0.15))


class TrafficPlan:
    """Decides, payload by payload, what the ward sends next.

    Each device's measurement times are kept unique (to the millisecond) so that two different
    payloads never carry the same natural key (device, metric, time): only deliberate retries
    repeat one, and they repeat it exactly, so ingest must count them as duplicates.
    """

    def __init__(
        self,
        ward: Ward,
        rng: np.random.Generator,
        *,
        shares: Shares,
        episodes: tuple[Episode, ...],
    ) -> None:
        self._ward = ward
        self._rng = rng
        self._shares = shares
        self._vitals = Vitals(rng, episodes)
        weights = np.array([_SEND_WEIGHT[d.kind] for d in ward.devices])
        self._weights = weights / weights.sum()
        self._used_ms: dict[uuid.UUID, set[int]] = {d.device_id: set() for d in ward.devices}
        self._sequence: dict[uuid.UUID, int] = dict.fromkeys(self._used_ms, 0)
        # Recent payloads whose readings are all valid: what a retry may repeat.
        self._history: deque[PlannedPayload] = deque(maxlen=2000)

    def next_payload(self, now: datetime) -> PlannedPayload:
        draw = float(self._rng.random())
        device = self._ward.devices[int(self._rng.choice(len(self._ward.devices), p=self._weights))]
        if draw < self._shares.retry and self._history:
            earlier = self._history[int(self._rng.integers(len(self._history)))]
            return PlannedPayload(earlier.device, earlier.body, earlier.readings, "retry")
        draw -= self._shares.retry
        if draw < self._shares.late:
            late_s = float(self._rng.uniform(LATE_MIN_S, LATE_MAX_S))
            return self._remember(self._measured(device, now - timedelta(seconds=late_s), "late"))
        draw -= self._shares.late
        if draw < self._shares.bad:
            return self._bad(device, now)
        return self._remember(self._measured(device, now, "live"))

    def _remember(self, payload: PlannedPayload) -> PlannedPayload:
        self._history.append(payload)
        return payload

    def _measured(self, device: SimDevice, at: datetime, category: Category) -> PlannedPayload:
        at = self._unique_time(device, at)
        items = self._items(device, at)
        readings = sum(2 if "systolic" in item else 1 for item in items)
        return PlannedPayload(device, self._body(device, items), readings, category)

    def _bad(self, device: SimDevice, now: datetime) -> PlannedPayload:
        kind = BAD_KINDS[int(self._rng.integers(len(BAD_KINDS)))]
        item = self._primary_item(device, self._unique_time(device, now))
        if kind == "unknown_metric":
            item["metric"] = _UNKNOWN_METRICS[int(self._rng.integers(len(_UNKNOWN_METRICS)))]
        elif kind == "out_of_range":
            item["value"] = _OUT_OF_RANGE[device.unit]
        elif kind == "wrong_unit":
            item["unit"] = _WRONG_UNIT[device.kind]
        body = self._body(device, [item])
        if kind == "truncated_json":
            # Any proper prefix of a JSON object is invalid JSON: the closing brace is missing.
            body = body[: int(self._rng.integers(1, len(body)))]
        return PlannedPayload(device, body, 1, "bad", kind)

    def _unique_time(self, device: SimDevice, at: datetime) -> datetime:
        used = self._used_ms[device.device_id]
        ms = math.floor(at.timestamp() * 1000)
        while ms in used:
            ms += 1
        used.add(ms)
        # Built exactly (not from a float), so the wire time says the same millisecond.
        return _EPOCH + timedelta(milliseconds=ms)

    def _body(self, device: SimDevice, items: list[dict[str, Any]]) -> bytes:
        return json.dumps({"device_id": str(device.device_id), "readings": items}).encode()

    def _item(
        self, device: SimDevice, metric: str, at: datetime, unit: str, **values: float
    ) -> dict[str, Any]:
        sequence = self._sequence[device.device_id] = self._sequence[device.device_id] + 1
        return {
            "metric": _CODES[metric][1 if device.loinc_codes else 0],
            **values,
            "unit": unit,
            "time": _wire_time(device, at),
            "id": f"{device.serial}-{sequence}",
        }

    def _items(self, device: SimDevice, at: datetime) -> list[dict[str, Any]]:
        patient = self._ward.patients[device.patient]
        base, index = patient.baseline, device.patient
        if device.kind == "pulse_oximeter":
            heart_rate = self._vitals.heart_rate(index, base, at)
            return [
                self._item(device, "spo2", at, "%", value=self._vitals.spo2(index, base, at)),
                self._item(device, "heart_rate", at, "/min", value=heart_rate),
            ]
        if device.kind == "bp_cuff":
            systolic, diastolic = self._vitals.blood_pressure(index, base, at)
            if self._rng.random() < 0.2:  # some cuffs send the panel's parts as two readings
                return [
                    self._item(device, "bp_systolic", at, device.unit, value=systolic),
                    self._item(device, "bp_diastolic", at, device.unit, value=diastolic),
                ]
            panel = {"systolic": systolic, "diastolic": diastolic}
            return [self._item(device, "blood_pressure", at, device.unit, **panel)]
        return [self._primary_item(device, at)]

    def _primary_item(self, device: SimDevice, at: datetime) -> dict[str, Any]:
        """The device's main scalar reading, in its own unit."""
        patient = self._ward.patients[device.patient]
        base, index = patient.baseline, device.patient
        metric = _PRIMARY_METRIC[device.kind]
        value: float
        if device.kind == "pulse_oximeter":
            value = self._vitals.spo2(index, base, at)
        elif device.kind == "bp_cuff":
            value = self._vitals.blood_pressure(index, base, at)[0]
        elif device.kind == "glucose_meter":
            mg_dl = self._vitals.glucose_mg_dl(base, at)
            value = round(mg_dl * _MMOL_PER_MG_DL, 1) if device.unit == "mmol/L" else mg_dl
        elif device.kind == "scale":
            kg = self._vitals.weight_kg(base)
            value = round(kg * _LB_PER_KG if device.unit == "[lb_av]" else kg, 1)
        else:
            celsius = self._vitals.temperature_c(base)
            value = round(celsius * 9 / 5 + 32 if device.unit == "[degF]" else celsius, 1)
        return self._item(device, metric, at, device.unit, value=value)


def _wire_time(device: SimDevice, at: datetime) -> str | int:
    if device.epoch_ms:
        return round(at.timestamp() * 1000)
    offset = timezone(timedelta(minutes=device.utc_offset_minutes))
    return at.astimezone(offset).isoformat(timespec="milliseconds")
