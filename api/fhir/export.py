"""Readings to FHIR R4 vital-signs Observations, and the search parameters that select them.

One Observation per reading, except blood pressure: the systolic and diastolic readings of the
same device and measurement time become one panel Observation (LOINC 85354-9) with components
8480-6 and 8462-4. The scoping function returns such a pair as one group (``resource_key``
``blood_pressure``), so pairing is a look at neighbouring rows, never a second query. A half
without its partner (only one was sent, or the search asked for one code) is exported on its own
with its own code.

Observation ids are derived from the natural key (device, metric group, measurement time), so
the same reading always has the same id, across pages and exports.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from api.fhir.resources import (
    BP_DIASTOLIC,
    BP_PANEL,
    BP_PANEL_DISPLAY,
    BP_PROFILE,
    BP_SYSTOLIC,
    LOINC,
    OBSERVATION_CATEGORY,
    UCUM,
    VITAL_SIGNS_PROFILE,
)

# A fixed namespace for the uuid5 Observation ids (any constant uuid would do; never change it).
_ID_NAMESPACE = uuid.UUID("6f1d7c64-3d5e-4a8e-9a57-4c1f0b8e2d11")
BP_GROUP = "blood_pressure"
_PANEL_SUFFIXES = (":systolic", ":diastolic")


@dataclass(frozen=True)
class Metric:
    metric_id: int
    code: str
    loinc_code: str
    display_name: str
    canonical_unit: str


@dataclass(frozen=True)
class MetricCatalogue:
    metrics: dict[int, Metric]
    ids_by_name: dict[str, frozenset[int]]

    @classmethod
    def build(
        cls, metrics: Sequence[Metric], aliases: Sequence[tuple[str, int]]
    ) -> MetricCatalogue:
        names: dict[str, set[int]] = {}
        for metric in metrics:
            names.setdefault(metric.code, set()).add(metric.metric_id)
            names.setdefault(metric.loinc_code, set()).add(metric.metric_id)
        for alias, metric_id in aliases:
            names.setdefault(alias, set()).add(metric_id)
        # The panel code selects both halves of blood pressure.
        halves = {m.metric_id for m in metrics if m.loinc_code in (BP_SYSTOLIC, BP_DIASTOLIC)}
        names.setdefault(BP_PANEL, set()).update(halves)
        names.setdefault(BP_GROUP, set()).update(halves)
        return cls(
            {m.metric_id: m for m in metrics},
            {name: frozenset(ids) for name, ids in names.items()},
        )


class SearchParameterError(ValueError):
    """A search parameter this server cannot honour (HTTP 400 with an OperationOutcome).

    ``parameter`` is its name as sent (the OperationOutcome issue's expression).
    """

    def __init__(self, detail: str, *, parameter: str | None = None) -> None:
        super().__init__(detail)
        self.parameter = parameter


@dataclass(frozen=True)
class TimeRange:
    start: datetime  # inclusive
    end: datetime  # exclusive


_FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_DATE_PARAM = re.compile(r"(eq|ge|gt|le|lt)?(.+)", re.ASCII)


def _bounds(value: str) -> tuple[datetime, datetime]:
    """The instant range a FHIR date search value covers: a day, or one instant (to the us)."""
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value, re.ASCII):
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:  # shaped like a date, but e.g. month 13 or day 45
            raise SearchParameterError(
                f"date {value!r} is not a valid date: {exc}", parameter="date"
            ) from None
        start = datetime.combine(day, time(), UTC)
        return start, start + timedelta(days=1)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SearchParameterError(
            f"date {value!r} is not a FHIR date or dateTime", parameter="date"
        ) from None
    if moment.tzinfo is None:
        # A local time is ambiguous, as on ingest: refused, never guessed.
        raise SearchParameterError(
            f"date {value!r} needs a UTC offset (or use a plain date)", parameter="date"
        )
    return moment, moment + _ONE_US


def _clamped_bounds(value: str) -> tuple[datetime, datetime]:
    try:
        low, high = _bounds(value)
    except OverflowError:
        raise SearchParameterError(f"date {value!r} is out of range", parameter="date") from None
    return max(low, _FAR_PAST), min(high, _FAR_FUTURE)


def parse_dates(values: Sequence[str]) -> TimeRange:
    """``date=ge2026-11-24&date=lt2026-11-25T06:00:00Z`` as one half-open range (ANDed)."""
    start, end = _FAR_PAST, _FAR_FUTURE
    for raw in values:
        match = _DATE_PARAM.fullmatch(raw)
        if match is None:
            raise SearchParameterError("date must not be empty", parameter="date")
        prefix, lo_hi = match[1] or "eq", _clamped_bounds(match[2])
        low, high = lo_hi
        if prefix in ("eq", "ge"):
            start = max(start, low)
        if prefix == "gt":
            start = max(start, high)
        if prefix in ("eq", "le"):
            end = min(end, high)
        if prefix == "lt":
            end = min(end, low)
    return TimeRange(start, end)


def parse_codes(value: str | None, catalogue: MetricCatalogue) -> list[int] | None:
    """``code=8867-4,http://loinc.org|2708-6`` as metric ids (None: every metric)."""
    if value is None:
        return None
    ids: set[int] = set()
    for token in value.split(","):
        system, bar, code = token.rpartition("|")
        if bar and system not in ("", LOINC):
            raise SearchParameterError(
                f"code system {system!r} is not supported (use {LOINC})", parameter="code"
            )
        found = catalogue.ids_by_name.get(code)
        if found is None:
            raise SearchParameterError(f"unknown code {code!r}", parameter="code")
        ids |= found
    return sorted(ids)


def parse_patient(value: str) -> uuid.UUID:
    """``Patient/<id>`` or ``<id>``."""
    _, _, ident = value.rpartition("Patient/") if value.startswith("Patient/") else ("", "", value)
    try:
        return uuid.UUID(ident)
    except ValueError:
        raise SearchParameterError(
            f"patient {value!r} is not a Patient id", parameter="patient"
        ) from None


def effective_date_time(measured_at: datetime, utc_offset_minutes: int | None) -> str:
    """The measurement time in the device's own offset when it sent one, else in UTC."""
    offset = timezone(timedelta(minutes=utc_offset_minutes or 0))
    text = measured_at.astimezone(offset).isoformat()
    return text.replace("+00:00", "Z") if utc_offset_minutes is None else text


def observation_id(device_id: uuid.UUID, group: str, measured_at: datetime) -> str:
    key = f"{device_id}|{group}|{measured_at.astimezone(UTC).isoformat()}"
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _concept(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


_VITAL_SIGNS = [
    {
        "coding": [
            {"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}
        ],
        "text": "Vital Signs",
    }
]


def _base(row: dict[str, Any], patient_id: uuid.UUID, group: str, profile: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": observation_id(row["device_id"], group, row["measured_at"]),
        "meta": {"profile": [profile]},
        "status": "final",
        "category": _VITAL_SIGNS,
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": effective_date_time(row["measured_at"], row["utc_offset_minutes"]),
        "device": {"reference": f"Device/{row['device_id']}"},
    }


def _single(row: dict[str, Any], patient_id: uuid.UUID, metric: Metric) -> dict[str, Any]:
    observation = _base(row, patient_id, metric.code, VITAL_SIGNS_PROFILE)
    if row["client_reading_id"] is not None:
        observation["identifier"] = [{"value": row["client_reading_id"]}]
    observation["code"] = _concept(metric.loinc_code, metric.display_name)
    observation["valueQuantity"] = _quantity(row["value"], metric.canonical_unit)
    return observation


def _panel_identifier(systolic: str | None, diastolic: str | None) -> str | None:
    """The client id of the whole measurement: ``bp-7`` from ``bp-7:systolic`` and
    ``bp-7:diastolic`` (how ingest stores a panel), else the systolic half's own id."""
    if systolic and diastolic:
        base_s = systolic.removesuffix(_PANEL_SUFFIXES[0])
        base_d = diastolic.removesuffix(_PANEL_SUFFIXES[1])
        if base_s == base_d and base_s != systolic:
            return base_s
    return systolic or diastolic


def _panel(
    systolic: dict[str, Any],
    diastolic: dict[str, Any],
    patient_id: uuid.UUID,
    catalogue: MetricCatalogue,
) -> dict[str, Any]:
    observation = _base(systolic, patient_id, BP_GROUP, BP_PROFILE)
    ident = _panel_identifier(systolic["client_reading_id"], diastolic["client_reading_id"])
    if ident is not None:
        observation["identifier"] = [{"value": ident}]
    observation["code"] = _concept(BP_PANEL, BP_PANEL_DISPLAY)
    observation["component"] = [
        {
            "code": _concept(m.loinc_code, m.display_name),
            "valueQuantity": _quantity(row["value"], m.canonical_unit),
        }
        for row in (systolic, diastolic)
        for m in (catalogue.metrics[row["metric_id"]],)
    ]
    return observation


def group_rows(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive rows of one (time, device, resource_key): one Observation each."""
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        key = (row["measured_at"], row["device_id"], row["resource_key"])
        if (
            groups
            and (
                groups[-1][0]["measured_at"],
                groups[-1][0]["device_id"],
                groups[-1][0]["resource_key"],
            )
            == key
        ):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def observations(
    group: Sequence[dict[str, Any]], patient_id: uuid.UUID, catalogue: MetricCatalogue
) -> list[dict[str, Any]]:
    """The Observation(s) of one group: a BP panel for a complete pair, else one per reading."""
    by_loinc = {catalogue.metrics[row["metric_id"]].loinc_code: row for row in group}
    if len(group) == 2 and set(by_loinc) == {BP_SYSTOLIC, BP_DIASTOLIC}:
        return [_panel(by_loinc[BP_SYSTOLIC], by_loinc[BP_DIASTOLIC], patient_id, catalogue)]
    return [_single(row, patient_id, catalogue.metrics[row["metric_id"]]) for row in group]
