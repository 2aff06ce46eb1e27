"""Validating decoded readings against the metric catalogue and the sending device.

Pure functions: no database, no clock, no logging (the caller logs and counts rejections).

Every reading of a payload ends either accepted (a ``ValidatedReading``: canonical unit, UTC time,
the patient the device was assigned to at the reading's time) or rejected (a ``Rejection`` with a
machine-readable ``reason`` and a ``detail`` for a person). A reading gets the reason of the first
check it fails, in this order:

 1. ``unknown_device``     no device context (the sender is not registered);
 2. ``device_mismatch``    the payload's ``device_id`` is not the device that sent it;
 3. ``device_inactive``    the device is suspended or retired;
    (1 to 3 concern the whole payload: every reading, malformed ones included, gets them)
 4. ``invalid_reading``    structurally unusable (from decoding; the detail names the members);
 5. ``unknown_metric``     the name is no catalogue code, LOINC code, alias or BP panel code;
 6. ``unconvertible_unit`` no conversion from the unit to the metric's canonical unit;
 7. ``non_finite_value``   NaN or +-Infinity (literal or overflowing, e.g. 1e999);
 8. ``out_of_range``       the canonical value is outside the metric's plausible range;
 9. ``future_time``        more than ``max_future`` after ``now``;
10. ``too_old``            before ``oldest_allowed`` (the retention horizon), when given;
11. ``no_assignment``      no assignment period [valid_from, valid_until) of the device covers
                           the reading's time.

Device-level problems come first because nothing in such a payload may be stored; structure,
metric and unit next because later checks need them; value checks before time checks, and
attribution last because it needs a trustworthy time. The order is the order of ``REASONS``.

A blood-pressure panel is atomic: both parts are stored or neither. When a part fails, the panel
is rejected once (at its index) with the earliest reason of its two parts (systolic on a tie),
and the detail names the part.

Checks 5 and 6 are resolved once per distinct (metric, unit) pair in the payload; checks 7 to 11
run vectorised with numpy over all readings of the payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ingest.catalogue import Catalogue, MetricSpec
from ingest.devices import DeviceContext
from ingest.payload import (
    BP_PANEL_METRICS,
    EPOCH,
    DecodedPayload,
    RawReading,
    json_excerpt,
)
from ingest.store import ValidatedReading

UNKNOWN_DEVICE: Final = "unknown_device"
DEVICE_MISMATCH: Final = "device_mismatch"
DEVICE_INACTIVE: Final = "device_inactive"
INVALID_READING: Final = "invalid_reading"
UNKNOWN_METRIC: Final = "unknown_metric"
UNCONVERTIBLE_UNIT: Final = "unconvertible_unit"
NON_FINITE_VALUE: Final = "non_finite_value"
OUT_OF_RANGE: Final = "out_of_range"
FUTURE_TIME: Final = "future_time"
TOO_OLD: Final = "too_old"
NO_ASSIGNMENT: Final = "no_assignment"

# In check order (see the module docstring).
REASONS: Final = (
    UNKNOWN_DEVICE,
    DEVICE_MISMATCH,
    DEVICE_INACTIVE,
    INVALID_READING,
    UNKNOWN_METRIC,
    UNCONVERTIBLE_UNIT,
    NON_FINITE_VALUE,
    OUT_OF_RANGE,
    FUTURE_TIME,
    TOO_OLD,
    NO_ASSIGNMENT,
)

# Catalogue codes of the BP panel's parts, in the order the panel is expanded.
_BP_PARTS = (("systolic", "bp_systolic"), ("diastolic", "bp_diastolic"))

# Per-lane result codes of the vectorised checks; a lower nonzero code is an earlier check.
_OK = 0
_LANE_REASONS = (None, NON_FINITE_VALUE, OUT_OF_RANGE, FUTURE_TIME, TOO_OLD, NO_ASSIGNMENT)
_NON_FINITE, _OUT_OF_RANGE, _FUTURE, _TOO_OLD, _NO_ASSIGNMENT = range(1, 6)

_ONE_US = timedelta(microseconds=1)
_INT64 = np.iinfo(np.int64)
_INDEX = attrgetter("index")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A reading that is not stored, and why (the quarantine row's reason and detail)."""

    index: int  # position in the payload's readings array
    reason: str  # one of REASONS; matches the quarantine's '^[a-z][a-z0-9_]*$'
    detail: str
    reading: dict[str, Any] | bytes  # the reading's JSON object as received


@dataclass(frozen=True)
class ValidationResult:
    accepted: list[ValidatedReading]  # payload order; a BP panel gives systolic, diastolic
    rejected: list[Rejection]  # ordered by index, one per rejected entry of the payload


def validate_readings(
    payload: DecodedPayload,
    *,
    device: DeviceContext | None,
    catalogue: Catalogue,
    received_at: datetime,
    now: datetime | None = None,
    max_future: timedelta = timedelta(minutes=5),
    oldest_allowed: datetime | None = None,
) -> ValidationResult:
    """Split a decoded payload into storable readings and rejections (checks: module docstring).

    ``received_at``: when the server received the payload (stored with every reading).
    ``now``: the server time that ``max_future`` is measured from; defaults to ``received_at``.
    ``oldest_allowed``: readings before it are refused (``too_old``), e.g. the retention horizon.
    All datetimes must be timezone-aware.
    """
    received_at = _aware(received_at, "received_at").astimezone(UTC)
    now_us = _epoch_us(now if now is not None else received_at, "now")
    oldest_us = None if oldest_allowed is None else _epoch_us(oldest_allowed, "oldest_allowed")

    device_problem = _device_problem(payload, device)
    if device_problem is not None:
        reason, detail = device_problem
        everything = [Rejection(r.index, reason, detail, r.raw) for r in payload.readings]
        everything += [Rejection(e.index, reason, detail, e.raw) for e in payload.errors]
        everything.sort(key=_INDEX)
        return ValidationResult([], everything)
    assert device is not None  # _device_problem reports a missing device

    rejected = [Rejection(e.index, INVALID_READING, e.detail, e.raw) for e in payload.errors]

    # Checks 5 and 6, once per distinct (metric, unit); every reading that passes them becomes
    # one lane (a BP panel two) in the arrays of the vectorised checks.
    resolver = _Resolver(catalogue)
    resolved = resolver.resolved
    kept: list[RawReading] = []
    values: list[float] = []
    times: list[int] = []
    lane_kinds: list[int] = []
    for reading in payload.readings:
        lanes = resolved.get((reading.metric, reading.unit))
        if lanes is None:
            lanes = resolver.resolve(reading.metric, reading.unit)
        if isinstance(lanes, _Unusable):
            rejected.append(Rejection(reading.index, lanes.reason, lanes.detail, reading.raw))
            continue
        kept.append(reading)
        if reading.value is not None:
            values.append(reading.value)
            times.append(reading.time_us)
            lane_kinds.append(lanes[0])
        else:
            assert reading.systolic is not None and reading.diastolic is not None
            values += (reading.systolic, reading.diastolic)
            times += (reading.time_us, reading.time_us)
            lane_kinds += lanes

    accepted: list[ValidatedReading] = []
    if kept:
        checks = _LaneChecks(
            resolver,
            device,
            values,
            times,
            lane_kinds,
            now_us=now_us,
            max_future_us=max_future // _ONE_US,
            oldest_us=oldest_us,
        )
        _collect(kept, checks, device, received_at, accepted, rejected)

    rejected.sort(key=_INDEX)
    return ValidationResult(accepted, rejected)


def _device_problem(
    payload: DecodedPayload, device: DeviceContext | None
) -> tuple[str, str] | None:
    if device is None:
        named = "" if payload.device_id is None else f" {payload.device_id}"
        return UNKNOWN_DEVICE, f"the sending device{named} is not registered"
    if payload.device_id is not None and payload.device_id != device.device_id:
        return (
            DEVICE_MISMATCH,
            f"the payload names device {payload.device_id} but was sent by device "
            f"{device.device_id}",
        )
    if device.status != "active":
        return (
            DEVICE_INACTIVE,
            f"device {device.device_id} is {device.status}; only active devices may submit "
            "readings",
        )
    return None


@dataclass(frozen=True, slots=True)
class _Unusable:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class _LaneKind:
    """How one stored metric is derived from a (metric, unit) pair of the payload."""

    spec: MetricSpec
    unit: str  # as sent
    scale: float
    shift: float
    member: str  # the reading's member holding the value: value, systolic or diastolic


class _Resolver:
    """Checks 5 and 6 (unknown_metric, unconvertible_unit) with a per-payload cache."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.kinds: list[_LaneKind] = []
        self.resolved: dict[tuple[str, str], tuple[int, ...] | _Unusable] = {}

    def resolve(self, metric: str, unit: str) -> tuple[int, ...] | _Unusable:
        result = self._resolve(metric, unit)
        self.resolved[metric, unit] = result
        return result

    def _resolve(self, metric: str, unit: str) -> tuple[int, ...] | _Unusable:
        catalogue = self.catalogue
        parts: list[tuple[str, int]] = []
        if metric in BP_PANEL_METRICS:
            missing = []
            for member, code in _BP_PARTS:
                metric_id = catalogue.metric_id(code)
                if metric_id is None or metric_id not in catalogue.metrics:
                    missing.append(code)
                else:
                    parts.append((member, metric_id))
            if missing:
                return _Unusable(
                    UNKNOWN_METRIC,
                    f"the blood pressure panel {metric!r} needs the catalogue metrics "
                    f"bp_systolic and bp_diastolic; missing: {', '.join(missing)}",
                )
        else:
            metric_id = catalogue.metric_id(metric)
            if metric_id is None or metric_id not in catalogue.metrics:
                known = sorted(spec.code for spec in catalogue.metrics.values())
                return _Unusable(
                    UNKNOWN_METRIC,
                    f"metric {json_excerpt(metric)} is not in the catalogue; send a catalogue "
                    f"code ({', '.join(known)}, or blood_pressure for a BP panel), its LOINC "
                    "code or an alias",
                )
            parts.append(("value", metric_id))

        kinds: list[_LaneKind] = []
        for member, metric_id in parts:
            spec = catalogue.metrics[metric_id]
            conversion = catalogue.conversion(metric_id, unit)
            if conversion is not None:
                kinds.append(_LaneKind(spec, unit, conversion.scale, conversion.shift, member))
            elif unit == spec.canonical_unit:  # catalogues always hold it; be safe anyway
                kinds.append(_LaneKind(spec, unit, 1.0, 0.0, member))
            else:
                accepted = _accepted_units(catalogue.conversions, spec)
                return _Unusable(
                    UNCONVERTIBLE_UNIT,
                    f"unit {json_excerpt(unit)} cannot be converted to {spec.code}'s canonical "
                    f"unit {spec.canonical_unit}; accepted units: {', '.join(accepted)}",
                )
        first = len(self.kinds)
        self.kinds += kinds
        return tuple(range(first, first + len(kinds)))


def _accepted_units(conversions: Mapping[tuple[int, str], object], spec: MetricSpec) -> list[str]:
    others = sorted(
        unit
        for metric_id, unit in conversions
        if metric_id == spec.metric_id and unit != spec.canonical_unit
    )
    return [spec.canonical_unit, *others]


class _LaneChecks:
    """Checks 7 to 11 over all lanes at once; per lane a result code and the canonical value."""

    def __init__(
        self,
        resolver: _Resolver,
        device: DeviceContext,
        values: list[float],
        times: list[int],
        lane_kinds: list[int],
        *,
        now_us: int,
        max_future_us: int,
        oldest_us: int | None,
    ) -> None:
        self.kinds = resolver.kinds
        self.device = device
        self.now_us = now_us
        self.max_future_us = max_future_us
        self.oldest_us = oldest_us
        self.times = times
        self.lane_kinds = lane_kinds

        kinds = self.kinds
        kind = np.asarray(lane_kinds, dtype=np.intp)
        scale = np.array([k.scale for k in kinds], dtype=np.float64)[kind]
        shift = np.array([k.shift for k in kinds], dtype=np.float64)[kind]
        low = np.array([k.spec.plausible_min for k in kinds], dtype=np.float64)[kind]
        high = np.array([k.spec.plausible_max for k in kinds], dtype=np.float64)[kind]
        value = np.array(values, dtype=np.float64)
        time = np.array(times, dtype=np.int64)
        # Overflow of a huge finite value to inf is expected (it fails the range check).
        with np.errstate(over="ignore", invalid="ignore"):
            canonical = value * scale + shift

        self.assignments = _AssignmentTable(device)
        slot, covered = self.assignments.lookup(time)

        # Later assignments overwrite earlier ones, so run the checks from the last to the
        # first: each lane ends with the code of the earliest check it fails.
        code = np.zeros(len(values), dtype=np.int8)
        code[~covered] = _NO_ASSIGNMENT
        if oldest_us is not None:
            code[time < oldest_us] = _TOO_OLD
        code[time > _clamp_int64(now_us + max_future_us)] = _FUTURE
        # Written as "not inside" so that NaN (all comparisons false) fails too.
        code[~((canonical >= low) & (canonical <= high))] = _OUT_OF_RANGE
        code[~np.isfinite(value)] = _NON_FINITE

        self.codes: list[int] = code.tolist()
        self.canonical: list[float] = canonical.tolist()
        self.slots: list[int] = slot.tolist()
        self.values = values

    def rejection(self, reading: RawReading, lane: int) -> Rejection:
        code = self.codes[lane]
        reason = _LANE_REASONS[code]
        assert reason is not None
        kind = self.kinds[self.lane_kinds[lane]]
        where = f"readings[{reading.index}]"
        value = self.values[lane]
        time_us = self.times[lane]
        if code == _NON_FINITE:
            detail = (
                f"{where}.{kind.member} is {_json_number(value)}; only finite numbers are stored"
            )
        elif code == _OUT_OF_RANGE:
            spec = kind.spec
            converted = (
                ""
                if kind.unit == spec.canonical_unit
                else f" = {self.canonical[lane]:.6g} {spec.canonical_unit}"
            )
            detail = (
                f"{where}.{kind.member} {value:.10g} {kind.unit}{converted} is outside the "
                f"plausible range of {spec.code}: {spec.plausible_min:g} to "
                f"{spec.plausible_max:g} {spec.canonical_unit}"
            )
        elif code == _FUTURE:
            detail = (
                f"{where}.time {_iso(time_us)} is {_duration(time_us - self.now_us)} after the "
                f"server time {_iso(self.now_us)}; at most {_duration(self.max_future_us)} "
                "ahead is accepted (is the device clock wrong?)"
            )
        elif code == _TOO_OLD:
            assert self.oldest_us is not None
            detail = (
                f"{where}.time {_iso(time_us)} is before {_iso(self.oldest_us)}, the oldest "
                "time accepted (retention horizon)"
            )
        else:
            detail = (
                f"{where}: device {self.device.device_id} was assigned to no patient at "
                f"{_iso(time_us)}{self.assignments.explain_gap(self.slots[lane])}"
            )
        return Rejection(reading.index, reason, detail, reading.raw)


class _AssignmentTable:
    """The device's assignment periods as sorted arrays; attribution at the reading's time."""

    def __init__(self, device: DeviceContext) -> None:
        periods = sorted(device.assignments, key=attrgetter("valid_from"))
        self.patients = [a.patient_id for a in periods]
        self.starts = [_epoch_us(a.valid_from, "Assignment.valid_from") for a in periods]
        self.ends = [
            _INT64.max if a.valid_until is None else _epoch_us(a.valid_until, "valid_until")
            for a in periods
        ]

    def lookup(
        self, time: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Per time: the slot of the last period starting at or before it (-1: none) and
        whether that period covers it. Periods do not overlap (the database enforces it) and
        are half-open, [valid_from, valid_until)."""
        if not self.starts:
            return np.full(time.shape, -1, dtype=np.intp), np.zeros(time.shape, dtype=np.bool_)
        starts = np.array(self.starts, dtype=np.int64)
        ends = np.array(self.ends, dtype=np.int64)
        slot = np.searchsorted(starts, time, side="right") - 1
        covered = (slot >= 0) & (time < ends[np.maximum(slot, 0)])
        return slot, covered

    def explain_gap(self, slot: int) -> str:
        if not self.starts:
            return "; it has no assignments"
        if slot < 0:
            return f"; its first assignment starts at {_iso(self.starts[0])}"
        ended = f"the assignment that ended at {_iso(self.ends[slot])}"
        if slot + 1 < len(self.starts):
            return f"; it falls between {ended} and the next, starting at " + _iso(
                self.starts[slot + 1]
            )
        return f"; it falls after {ended}"


def _collect(
    kept: list[RawReading],
    checks: _LaneChecks,
    device: DeviceContext,
    received_at: datetime,
    accepted: list[ValidatedReading],
    rejected: list[Rejection],
) -> None:
    """Turn lane results back into readings: accepted ones attributed, panels kept whole."""
    codes = checks.codes
    canonical = checks.canonical
    slots = checks.slots
    times = checks.times
    patients = checks.assignments.patients
    metric_ids = [k.spec.metric_id for k in checks.kinds]
    lane_kinds = checks.lane_kinds
    device_id = device.device_id
    lane = 0
    for reading in kept:
        if reading.value is not None:
            if codes[lane] == _OK:
                accepted.append(
                    ValidatedReading(
                        EPOCH + timedelta(microseconds=times[lane]),
                        device_id,
                        patients[slots[lane]],
                        metric_ids[lane_kinds[lane]],
                        canonical[lane],
                        received_at,
                        reading.utc_offset_minutes,
                        reading.client_id,
                    )
                )
            else:
                rejected.append(checks.rejection(reading, lane))
            lane += 1
            continue
        # A BP panel: two lanes, stored together or not at all.
        first, second = codes[lane], codes[lane + 1]
        if first == _OK and second == _OK:
            measured_at = EPOCH + timedelta(microseconds=times[lane])
            patient_id = patients[slots[lane]]
            for part, client_suffix in ((lane, ":systolic"), (lane + 1, ":diastolic")):
                accepted.append(
                    ValidatedReading(
                        measured_at,
                        device_id,
                        patient_id,
                        metric_ids[lane_kinds[part]],
                        canonical[part],
                        received_at,
                        reading.utc_offset_minutes,
                        None if reading.client_id is None else reading.client_id + client_suffix,
                    )
                )
        else:
            failing = lane if first != _OK and (second == _OK or first <= second) else lane + 1
            rejected.append(checks.rejection(reading, failing))
        lane += 2


def _aware(value: datetime, name: str) -> datetime:
    if value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _epoch_us(value: datetime, name: str) -> int:
    return (_aware(value, name) - EPOCH) // _ONE_US


def _clamp_int64(value: int) -> int:
    return max(int(_INT64.min), min(int(_INT64.max), value))


def _iso(epoch_us: int) -> str:
    if epoch_us >= _INT64.max:
        return "never"
    return (EPOCH + timedelta(microseconds=epoch_us)).isoformat().replace("+00:00", "Z")


def _duration(microseconds: int) -> str:
    seconds = microseconds / 1_000_000
    if abs(seconds) < 120:
        return f"{seconds:g} s"
    if abs(seconds) < 2 * 3600:
        return f"{seconds / 60:.4g} min"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:.4g} h"
    return f"{seconds / 86400:.4g} days"


def _json_number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
