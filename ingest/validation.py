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
run vectorised with numpy over all readings of the payload, and the accepted readings come out
as columns (``ReadingColumns``) without a Python object per reading. Python code runs per
reading only for rejected readings, to write their details.

A new check goes in three places: its reason in ``REASONS`` (check order), a lane code in
``_LANE_REASONS`` (when it is a per-reading check) set in ``_LaneChecks``, and its detail in
``_LaneChecks.rejection``.
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
from ingest.payload import BP_PANEL_METRICS, EPOCH, DecodedPayload, json_excerpt
from ingest.store import ReadingColumns, ValidatedReading, uuid_bytes

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
    # Accepted readings in payload order (a BP panel gives systolic, then diastolic) ...
    columns: ReadingColumns
    # ... and the payload position each came from.
    indexes: list[int]
    rejected: list[Rejection]  # ordered by index, one per rejected entry of the payload

    @property
    def accepted(self) -> list[ValidatedReading]:
        """The accepted readings one by one (not for the hot path)."""
        return self.columns.to_readings()


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
    # One long function on purpose: it is the hot path, one vectorised pass whose masks each
    # check narrows in the documented order (the first failing check names the reason), and
    # splitting it would pass a dozen arrays between helpers for no reader's gain.
    received_at = _aware(received_at, "received_at").astimezone(UTC)
    now_us = _epoch_us(now if now is not None else received_at, "now")
    oldest_us = None if oldest_allowed is None else _epoch_us(oldest_allowed, "oldest_allowed")

    columns = payload.columns
    device_problem = _device_problem(payload, device)
    if device_problem is not None:
        reason, detail = device_problem
        everything = [
            Rejection(index, reason, detail, columns.raw(row))
            for row, index in enumerate(columns.index.tolist())
        ]
        everything += [Rejection(e.index, reason, detail, e.raw) for e in payload.errors]
        everything.sort(key=_INDEX)
        return ValidationResult(ReadingColumns.empty(), [], everything)
    assert device is not None  # _device_problem reports a missing device

    rejected = [Rejection(e.index, INVALID_READING, e.detail, e.raw) for e in payload.errors]

    # Checks 5 and 6, once per distinct (metric, unit).
    resolver = _Resolver(catalogue)
    pairs = list(zip(columns.metric, columns.unit, strict=True))
    pair_numbers = {pair: number for number, pair in enumerate(dict.fromkeys(pairs))}
    if len(pair_numbers) == 1:  # the usual payload: one metric in one unit
        pair_of_row = np.zeros(len(pairs), dtype=np.intp)
    else:
        pair_of_row = np.fromiter(map(pair_numbers.__getitem__, pairs), np.intp, len(pairs))
    # Per pair: its lane kinds (-1: none) or unusable.
    first_kind = np.full(len(pair_numbers), -1, dtype=np.intp)
    second_kind = np.full(len(pair_numbers), -1, dtype=np.intp)
    unusable: dict[int, _Unusable] = {}
    for (metric, unit), number in pair_numbers.items():
        lanes = resolver.resolve(metric, unit)
        if isinstance(lanes, _Unusable):
            unusable[number] = lanes
        else:
            first_kind[number] = lanes[0]
            if len(lanes) > 1:
                second_kind[number] = lanes[1]
    kept = np.arange(len(columns), dtype=np.intp)
    if unusable:
        usable = first_kind[pair_of_row] >= 0
        for row in np.flatnonzero(~usable).tolist():
            problem = unusable[int(pair_of_row[row])]
            rejected.append(
                Rejection(int(columns.index[row]), problem.reason, problem.detail, columns.raw(row))
            )
        kept = kept[usable]

    # Every kept reading is one lane (a BP panel two) in the arrays of the vectorised checks.
    if columns.is_panel.any():
        lane_counts = 1 + columns.is_panel[kept]
        lane_row = np.repeat(kept, lane_counts)
        lane_start = np.cumsum(lane_counts) - lane_counts
        second = (np.arange(len(lane_row)) - np.repeat(lane_start, lane_counts)) == 1
        panel = columns.is_panel[lane_row]
        lane_value = np.where(
            panel,
            np.where(second, columns.diastolic[lane_row], columns.systolic[lane_row]),
            columns.value[lane_row],
        )
        lane_pair = pair_of_row[lane_row]
        lane_kind = np.where(second, second_kind[lane_pair], first_kind[lane_pair])
    else:
        lane_row = kept
        second = np.zeros(len(kept), dtype=np.bool_)
        lane_value = columns.value[kept]
        lane_kind = first_kind[pair_of_row[kept]]

    accepted = ReadingColumns.empty()
    indexes: list[int] = []
    if len(kept):
        checks = _LaneChecks(
            resolver,
            device,
            lane_value,
            columns.time_us[lane_row],
            lane_kind,
            now_us=now_us,
            max_future_us=max_future // _ONE_US,
            oldest_us=oldest_us,
        )
        accepted, indexes = _collect(
            payload, checks, lane_row, second, device, received_at, rejected
        )

    rejected.sort(key=_INDEX)
    return ValidationResult(accepted, indexes, rejected)


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
        values: npt.NDArray[np.float64],
        times: npt.NDArray[np.int64],
        lane_kinds: npt.NDArray[np.intp],
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
        kind = lane_kinds
        scale = np.array([k.scale for k in kinds], dtype=np.float64)[kind]
        shift = np.array([k.shift for k in kinds], dtype=np.float64)[kind]
        low = np.array([k.spec.plausible_min for k in kinds], dtype=np.float64)[kind]
        high = np.array([k.spec.plausible_max for k in kinds], dtype=np.float64)[kind]
        value = values
        time = times
        self.metric_ids = np.array([k.spec.metric_id for k in kinds], dtype=np.int16)[kind]
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

        self.codes = code
        self.canonical = canonical
        self.slots = slot
        self.values = values

    def rejection(self, index: int, raw: dict[str, Any], lane: int) -> Rejection:
        code = int(self.codes[lane])
        reason = _LANE_REASONS[code]
        assert reason is not None
        kind = self.kinds[int(self.lane_kinds[lane])]
        where = f"readings[{index}]"
        value = float(self.values[lane])
        time_us = int(self.times[lane])
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
                f"{_iso(time_us)}{self.assignments.explain_gap(int(self.slots[lane]))}"
            )
        return Rejection(index, reason, detail, raw)


class _AssignmentTable:
    """The device's assignment periods as sorted arrays; attribution at the reading's time."""

    def __init__(self, device: DeviceContext) -> None:
        periods = sorted(device.assignments, key=attrgetter("valid_from"))
        self.patients = uuid_bytes(a.patient_id for a in periods)
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
    payload: DecodedPayload,
    checks: _LaneChecks,
    lane_row: npt.NDArray[np.intp],
    second: npt.NDArray[np.bool_],
    device: DeviceContext,
    received_at: datetime,
    rejected: list[Rejection],
) -> tuple[ReadingColumns, list[int]]:
    """Turn lane results back into readings: accepted ones attributed, panels kept whole."""
    columns = payload.columns
    codes = checks.codes
    failed = codes != _OK
    lane_ok = np.ones(len(lane_row), dtype=np.bool_)
    if failed.any():
        # A reading (a panel: both its lanes) is stored only if all its lanes passed.
        row_failed = np.zeros(len(columns), dtype=np.bool_)
        row_failed[lane_row[failed]] = True
        lane_ok = ~row_failed[lane_row]
        for lane in np.flatnonzero(failed & ~second).tolist():
            row = int(lane_row[lane])
            if columns.is_panel[row]:
                # Report the earliest reason of the two parts (systolic on a tie).
                first_code, second_code = int(codes[lane]), int(codes[lane + 1])
                if second_code != _OK and (first_code == _OK or second_code < first_code):
                    continue  # reported from the diastolic lane below
            rejected.append(checks.rejection(int(columns.index[row]), columns.raw(row), lane))
        for lane in np.flatnonzero(failed & second).tolist():
            first_code, second_code = int(codes[lane - 1]), int(codes[lane])
            if first_code == _OK or second_code < first_code:
                row = int(lane_row[lane])
                rejected.append(checks.rejection(int(columns.index[row]), columns.raw(row), lane))

    accepted = np.flatnonzero(lane_ok)
    rows = lane_row[accepted]
    count = len(accepted)
    client_ids: list[str | None] | None = None
    if columns.client_id is not None:
        ids = columns.client_id
        panel = columns.is_panel
        client_ids = [
            _client_id(ids[row], bool(panel[row]), is_second)
            for row, is_second in zip(rows.tolist(), second[accepted].tolist(), strict=True)
        ]
    result = ReadingColumns(
        measured_us=checks.times[accepted],
        received_us=np.full(count, _epoch_us(received_at, "received_at"), dtype=np.int64),
        value=checks.canonical[accepted],
        device=np.repeat(uuid_bytes((device.device_id,)), count, axis=0),
        patient=checks.assignments.patients[checks.slots[accepted]],
        metric_id=checks.metric_ids[accepted],
        utc_offset=columns.utc_offset[rows],
        offset_unknown=columns.offset_unknown[rows],
        client_ids=client_ids,
    )
    return result, columns.index[rows].tolist()


def _client_id(sent: str | None, panel: bool, is_second: bool) -> str | None:
    """A panel's parts are stored with the panel's id and a suffix naming the part."""
    if sent is None or not panel:
        return sent
    return sent + (":diastolic" if is_second else ":systolic")


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
