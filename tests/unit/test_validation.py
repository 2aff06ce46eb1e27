"""Validating readings: catalogue, units, plausible ranges, times and attribution.

Payloads go through ``decode_payload`` first, as they do in the service, so each case reads as
the bytes a device sends and the rejection it gets back.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pytest

from ingest.catalogue import Catalogue, MetricSpec, UnitConversion
from ingest.devices import Assignment, DeviceContext
from ingest.payload import decode_payload
from ingest.validation import REASONS, ValidationResult, validate_readings

# --- the catalogue as seeded by schema/migrations/0001_initial.up.sql ------------------------

# metric_id, code, LOINC, canonical unit, plausible min, plausible max
SEED_METRICS = [
    (1, "heart_rate", "8867-4", "/min", 20.0, 300.0),
    (2, "resting_heart_rate", "40443-4", "/min", 20.0, 250.0),
    (3, "respiratory_rate", "9279-1", "/min", 2.0, 80.0),
    (4, "spo2", "2708-6", "%", 30.0, 100.0),
    (5, "bp_systolic", "8480-6", "mm[Hg]", 40.0, 300.0),
    (6, "bp_diastolic", "8462-4", "mm[Hg]", 20.0, 200.0),
    (7, "body_temperature", "8310-5", "Cel", 25.0, 45.0),
    (8, "body_weight", "29463-7", "kg", 0.3, 500.0),
    (9, "body_height", "8302-2", "cm", 20.0, 280.0),
    (10, "bmi", "39156-5", "kg/m2", 5.0, 150.0),
    (11, "glucose_cgm", "99504-3", "mg/dL", 10.0, 1000.0),
    (12, "steps_24h", "41950-7", "/d", 0.0, 200000.0),
]
SEED_ALIASES = {"59408-5": 4}
# Besides the identity conversion of every canonical unit: (metric_id, unit) -> (scale, shift).
SEED_CONVERSIONS = {
    (7, "[degF]"): (5.0 / 9.0, -160.0 / 9.0),
    (8, "g"): (0.001, 0.0),
    (8, "[lb_av]"): (0.45359237, 0.0),
    (9, "[in_i]"): (2.54, 0.0),
    (11, "mmol/L"): (18.016, 0.0),
}


def seed_catalogue(*, without: frozenset[str] = frozenset()) -> Catalogue:
    """The seeded catalogue, optionally without some metrics (by code)."""
    metrics = {row[0]: MetricSpec(*row) for row in SEED_METRICS if row[1] not in without}
    names: dict[str, int] = {}
    for spec in metrics.values():
        names[spec.code] = spec.metric_id
        names[spec.loinc_code] = spec.metric_id
    names.update({alias: mid for alias, mid in SEED_ALIASES.items() if mid in metrics})
    conversions = {
        (spec.metric_id, spec.canonical_unit): UnitConversion(1.0, 0.0) for spec in metrics.values()
    }
    conversions.update(
        {
            key: UnitConversion(*factors)
            for key, factors in SEED_CONVERSIONS.items()
            if key[0] in metrics
        }
    )
    return Catalogue(metrics, names, conversions)


CATALOGUE = seed_catalogue()


def _seed_sql() -> str:
    migration = resources.files("schema") / "migrations" / "0001_initial.up.sql"
    return migration.read_text(encoding="utf-8")


def _sql_number(text: str) -> float:
    """A seed literal: a number or one division such as 5.0 / 9.0."""
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator) if denominator else float(numerator)


def test_the_hand_built_catalogue_mirrors_the_seed_migration() -> None:
    # Released migrations are never edited, so this parse of its INSERTs stays valid.
    sql = _seed_sql()
    metric_rows = re.findall(
        r"\((\d+), '([a-z0-9_]+)', '([0-9-]+)', '[^']+', '([^']+)', ([0-9.]+), ([0-9.]+)\)", sql
    )
    assert [
        (int(m), code, loinc, unit, float(lo), float(hi))
        for m, code, loinc, unit, lo, hi in metric_rows
    ] == SEED_METRICS
    aliases = re.search(r"INSERT INTO rpm.metric_aliases .*?VALUES (.*?);", sql, re.DOTALL)
    assert aliases is not None
    assert {
        alias: int(mid) for alias, mid in re.findall(r"\('([^']+)', (\d+)\)", aliases[1])
    } == SEED_ALIASES
    conversion_rows = re.findall(r"\((\d+), '([^']+)', ([-0-9. /]+), ([-0-9. /]+)\)", sql)
    parsed = {
        (int(m), unit): (_sql_number(scale), _sql_number(shift))
        for m, unit, scale, shift in conversion_rows
    }
    assert parsed == SEED_CONVERSIONS


# --- devices and payloads --------------------------------------------------------------------

DEVICE_ID = uuid.UUID("0b6f2c1e-6a3d-4f5e-9b1a-2c3d4e5f6a7b")
PATIENT_A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
PATIENT_B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")
RECEIVED = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
ASSIGNED_SINCE = datetime(2026, 10, 1, tzinfo=UTC)


def device(
    *assignments: Assignment, status: str = "active", device_id: uuid.UUID = DEVICE_ID
) -> DeviceContext:
    if not assignments:
        assignments = (Assignment(ASSIGNED_SINCE, None, PATIENT_A),)
    return DeviceContext(device_id, status, assignments)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def reading(**members: Any) -> dict[str, Any]:
    """A valid SpO2 reading one minute before receipt, with members replaced or removed (...)."""
    base: dict[str, Any] = {
        "metric": "spo2",
        "value": 97.0,
        "unit": "%",
        "time": rfc3339(RECEIVED - timedelta(minutes=1)),
    }
    base.update(members)
    return {key: value for key, value in base.items() if value is not ...}


DEFAULT_DEVICE = device()


def validate(
    *readings: Any,
    raw: bytes | None = None,
    context: DeviceContext | None = DEFAULT_DEVICE,
    catalogue: Catalogue = CATALOGUE,
    **options: Any,
) -> ValidationResult:
    """Encode, decode and validate, as the ingest path does."""
    payload = raw if raw is not None else json.dumps({"readings": list(readings)}).encode()
    return validate_readings(
        decode_payload(payload),
        device=context,
        catalogue=catalogue,
        received_at=RECEIVED,
        **options,
    )


# --- rejections: one bad reading next to good ones -------------------------------------------


def _with_literal(literal: str, **members: Any) -> bytes:
    """A payload whose reading 1 has the JSON literal ``literal`` as its value."""
    payload = {"readings": [reading(), reading(value="LITERAL", **members), reading()]}
    return json.dumps(payload).encode().replace(b'"LITERAL"', literal.encode())


BAD_READINGS: list[Any] = [
    # (bad reading, expected reason, fragments of the detail)
    pytest.param(
        reading(metric="glucose_blood"),
        "unknown_metric",
        ['"glucose_blood" is not in the catalogue', "spo2"],
        id="unknown-metric",
    ),
    pytest.param(
        reading(metric="SpO2"), "unknown_metric", ['"SpO2"'], id="metric-names-are-case-sensitive"
    ),
    pytest.param(
        reading(unit="mm[Hg]"),
        "unconvertible_unit",
        ['"mm[Hg]" cannot be converted', "accepted units: %"],
        id="unconvertible-unit",
    ),
    pytest.param(
        reading(metric="body_temperature", value=310.0, unit="K"),
        "unconvertible_unit",
        ["accepted units: Cel, [degF]"],
        id="kelvin",
    ),
    pytest.param(
        reading(metric="blood_pressure", value=..., systolic=17, diastolic=11, unit="kPa"),
        "unconvertible_unit",
        ['"kPa"', "accepted units: mm[Hg]"],
        id="panel-in-kpa",
    ),
    pytest.param(
        reading(value=150.0),
        "out_of_range",
        ["readings[1].value 150 %", "plausible range of spo2: 30 to 100 %"],
        id="spo2-150",
    ),
    pytest.param(
        reading(value=29.9),
        "out_of_range",
        ["29.9 %", "30 to 100 %"],
        id="spo2-below-minimum",
    ),
    pytest.param(
        reading(metric="body_temperature", value=120.0, unit="[degF]"),
        "out_of_range",
        # (120 - 32) * 5 / 9 = 48.888...
        ["120 [degF] = 48.88", "body_temperature: 25 to 45 Cel"],
        id="fever-beyond-plausible-after-conversion",
    ),
    pytest.param(
        reading(metric="glucose_cgm", value=1e307, unit="mmol/L"),
        "out_of_range",
        ["glucose_cgm"],
        id="conversion-overflows",
    ),
    pytest.param(
        reading(time=rfc3339(RECEIVED + timedelta(minutes=10))),
        "future_time",
        ["2026-11-24T10:10:00Z", "10 min after the server time 2026-11-24T10:00:00Z"],
        id="ten-minutes-ahead",
    ),
    pytest.param(
        reading(value="97"),
        "invalid_reading",
        ["readings[1].value must be a number, got string"],
        id="string-value",
    ),
    pytest.param(
        reading(value=False),
        "invalid_reading",
        ["readings[1].value must be a number, got boolean false"],
        id="bool-value",
    ),
    pytest.param(
        reading(time={"seconds": 1}),
        "invalid_reading",
        ["readings[1].time must be an RFC 3339", "got an object"],
        id="object-time",
    ),
    pytest.param(
        reading(time="2026-11-24T09:59:00"),
        "invalid_reading",
        ["readings[1].time", "has no UTC offset"],
        id="naive-time",
    ),
]


@pytest.mark.parametrize(("bad", "reason", "fragments"), BAD_READINGS)
def test_a_bad_reading_is_rejected_with_its_reason(
    bad: dict[str, Any], reason: str, fragments: list[str]
) -> None:
    result = validate(reading(id="a"), bad, reading(id="c"))
    assert [r.client_reading_id for r in result.accepted] == ["a", "c"]
    (rejection,) = result.rejected
    assert (rejection.index, rejection.reason) == (1, reason)
    for fragment in fragments:
        assert fragment in rejection.detail
    assert rejection.reading == bad


@pytest.mark.parametrize(
    ("literal", "shown"),
    [
        ("NaN", "readings[1].value is NaN"),
        ("Infinity", "readings[1].value is Infinity"),
        ("-Infinity", "readings[1].value is -Infinity"),
        ("1e999", "readings[1].value is Infinity"),
        ("-1e999", "readings[1].value is -Infinity"),
    ],
)
def test_non_finite_values_are_rejected_not_crashed_on(literal: str, shown: str) -> None:
    result = validate(raw=_with_literal(literal))
    assert len(result.accepted) == 2
    (rejection,) = result.rejected
    assert (rejection.index, rejection.reason) == (1, "non_finite_value")
    assert shown in rejection.detail
    assert isinstance(rejection.reading, dict)


def test_a_non_finite_panel_part_is_named() -> None:
    # json.dumps writes float("nan") as the NaN literal, as some device firmware does.
    result = validate(
        reading(metric="blood_pressure", value=..., systolic=120, diastolic=math.nan, unit="mm[Hg]")
    )
    (rejection,) = result.rejected
    assert rejection.reason == "non_finite_value"
    assert "readings[0].diastolic is NaN" in rejection.detail
    assert result.accepted == []


# --- times -----------------------------------------------------------------------------------


def test_the_future_limit_is_inclusive_and_measured_from_now() -> None:
    limit = RECEIVED + timedelta(minutes=5)
    result = validate(
        reading(time=rfc3339(limit), id="at-limit"),
        reading(time=rfc3339(limit + timedelta(milliseconds=1)), id="beyond"),
    )
    assert [r.client_reading_id for r in result.accepted] == ["at-limit"]
    assert [r.reason for r in result.rejected] == ["future_time"]

    later_clock = validate(
        reading(time=rfc3339(limit + timedelta(minutes=1))),
        now=RECEIVED + timedelta(minutes=2),
        max_future=timedelta(minutes=4),
    )
    assert len(later_clock.accepted) == 1


def test_readings_before_the_retention_horizon_are_too_old() -> None:
    horizon = RECEIVED - timedelta(days=30)
    result = validate(
        reading(time=rfc3339(horizon), id="at-horizon"),
        reading(time=rfc3339(horizon - timedelta(seconds=1)), id="older"),
        context=device(Assignment(RECEIVED - timedelta(days=400), None, PATIENT_A)),
        oldest_allowed=horizon,
    )
    assert [r.client_reading_id for r in result.accepted] == ["at-horizon"]
    (rejection,) = result.rejected
    assert (rejection.index, rejection.reason) == (1, "too_old")
    assert "before 2026-10-25T10:00:00Z" in rejection.detail
    # Without a horizon the same reading is stored.
    unbounded = validate(
        reading(time=rfc3339(horizon - timedelta(seconds=1))),
        context=device(Assignment(RECEIVED - timedelta(days=400), None, PATIENT_A)),
    )
    assert len(unbounded.accepted) == 1


def test_epoch_ms_and_rfc3339_with_offset_give_the_same_instant() -> None:
    instant = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    result = validate(
        reading(metric="heart_rate", value=61, unit="/min", time="2026-11-24T10:00:00+01:00"),
        reading(value=97, time=int(instant.timestamp()) * 1000),
    )
    with_offset, epoch = result.accepted
    assert with_offset.measured_at == epoch.measured_at == instant
    assert with_offset.measured_at.utcoffset() == timedelta(0)
    assert epoch.measured_at.utcoffset() == timedelta(0)
    assert (with_offset.utc_offset_minutes, epoch.utc_offset_minutes) == (60, None)
    assert result.rejected == []


# --- conversions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "unit", "metric_id", "canonical"),
    [
        ("body_temperature", 98.6, "[degF]", 7, 37.0),
        ("8310-5", 37.2, "Cel", 7, 37.2),
        ("body_weight", 150, "[lb_av]", 8, 68.0388555),  # 150 x 0.45359237
        ("29463-7", 72_500, "g", 8, 72.5),
        ("body_height", 70, "[in_i]", 9, 177.8),
        ("glucose_cgm", 5.5, "mmol/L", 11, 99.088),  # 5.5 x 18.016
        ("99504-3", 104, "mg/dL", 11, 104.0),
        ("2708-6", 95, "%", 4, 95.0),
        ("59408-5", 96, "%", 4, 96.0),  # alias: SpO2 by pulse oximetry
        ("heart_rate", 61, "/min", 1, 61.0),
    ],
)
def test_values_are_stored_in_the_canonical_unit(
    metric: str, value: float, unit: str, metric_id: int, canonical: float
) -> None:
    result = validate(reading(metric=metric, value=value, unit=unit))
    (stored,) = result.accepted
    assert stored.metric_id == metric_id
    assert stored.value == pytest.approx(canonical, rel=1e-12)
    assert type(stored.value) is float


# --- blood pressure --------------------------------------------------------------------------


@pytest.mark.parametrize("panel_code", ["blood_pressure", "85354-9"])
def test_a_bp_panel_expands_into_systolic_and_diastolic(panel_code: str) -> None:
    result = validate(
        reading(metric=panel_code, value=..., systolic=128, diastolic=82, unit="mm[Hg]", id="bp-7")
    )
    systolic, diastolic = result.accepted
    assert (systolic.metric_id, systolic.value) == (5, 128.0)
    assert (diastolic.metric_id, diastolic.value) == (6, 82.0)
    assert (systolic.client_reading_id, diastolic.client_reading_id) == (
        "bp-7:systolic",
        "bp-7:diastolic",
    )
    assert systolic.measured_at == diastolic.measured_at == RECEIVED - timedelta(minutes=1)
    assert systolic.patient_id == diastolic.patient_id == PATIENT_A


def test_a_bp_panel_without_id_has_no_client_ids() -> None:
    result = validate(
        reading(metric="blood_pressure", value=..., systolic=120, diastolic=80, unit="mm[Hg]")
    )
    assert [r.client_reading_id for r in result.accepted] == [None, None]


def test_bp_as_two_separate_readings() -> None:
    result = validate(
        reading(metric="bp_systolic", value=131, unit="mm[Hg]", id="s"),
        reading(metric="8462-4", value=85, unit="mm[Hg]", id="d"),
    )
    assert [(r.metric_id, r.value, r.client_reading_id) for r in result.accepted] == [
        (5, 131.0, "s"),
        (6, 85.0, "d"),
    ]


def test_a_bp_panel_is_rejected_whole_when_one_part_is_implausible() -> None:
    result = validate(
        reading(),
        reading(metric="blood_pressure", value=..., systolic=120, diastolic=250, unit="mm[Hg]"),
    )
    assert len(result.accepted) == 1
    (rejection,) = result.rejected
    assert (rejection.index, rejection.reason) == (1, "out_of_range")
    assert "readings[1].diastolic 250 mm[Hg]" in rejection.detail
    assert "bp_diastolic: 20 to 200 mm[Hg]" in rejection.detail


@pytest.mark.parametrize(
    ("systolic", "diastolic", "reason", "part"),
    [
        (400.0, math.inf, "non_finite_value", "readings[0].diastolic is Infinity"),
        (math.nan, 250.0, "non_finite_value", "readings[0].systolic is NaN"),
        (400.0, 250.0, "out_of_range", "readings[0].systolic 400"),  # a tie: systolic
    ],
)
def test_a_bp_panel_reports_its_parts_earliest_failing_check(
    systolic: float, diastolic: float, reason: str, part: str
) -> None:
    result = validate(
        reading(
            metric="blood_pressure",
            value=...,
            systolic=systolic,
            diastolic=diastolic,
            unit="mm[Hg]",
        )
    )
    (rejection,) = result.rejected
    assert rejection.reason == reason
    assert part in rejection.detail


def test_the_bp_panel_needs_both_parts_in_the_catalogue() -> None:
    result = validate(
        reading(metric="blood_pressure", value=..., systolic=120, diastolic=80),
        catalogue=seed_catalogue(without=frozenset({"bp_diastolic"})),
    )
    (rejection,) = result.rejected
    assert rejection.reason == "unknown_metric"
    assert "missing: bp_diastolic" in rejection.detail


# --- devices and attribution -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "reason", "fragment"),
    [
        (None, "unknown_device", "not registered"),
        (device(status="suspended"), "device_inactive", f"device {DEVICE_ID} is suspended"),
        (device(status="retired"), "device_inactive", "is retired"),
        (
            device(device_id=uuid.UUID(int=7)),
            "device_mismatch",
            f"names device {DEVICE_ID} but was sent by device {uuid.UUID(int=7)}",
        ),
    ],
)
def test_device_problems_reject_every_reading(
    context: DeviceContext | None, reason: str, fragment: str
) -> None:
    sent = [reading(), reading(value="bad"), reading(metric="nope")]
    raw = json.dumps({"device_id": str(DEVICE_ID), "readings": sent}).encode()
    result = validate(raw=raw, context=context)
    assert result.accepted == []
    assert [(r.index, r.reason) for r in result.rejected] == [(0, reason), (1, reason), (2, reason)]
    assert all(fragment in r.detail for r in result.rejected)
    assert [r.reading for r in result.rejected] == sent


HANDOVER = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def test_readings_belong_to_the_patient_assigned_at_their_time() -> None:
    # The device went from patient B to patient A at HANDOVER. The periods are given latest
    # first, and A's id sorts before B's: attribution must order periods by time, by nothing else.
    handed_over = device(
        Assignment(HANDOVER, None, PATIENT_A),
        Assignment(ASSIGNED_SINCE, HANDOVER, PATIENT_B),
    )
    result = validate(
        reading(time=rfc3339(HANDOVER - timedelta(days=3)), id="early"),
        reading(time=rfc3339(HANDOVER - timedelta(microseconds=1)), id="last-of-b"),
        reading(time=rfc3339(HANDOVER), id="first-of-a"),
        reading(time=rfc3339(RECEIVED - timedelta(minutes=1)), id="today"),
        context=handed_over,
    )
    assert [(r.client_reading_id, r.patient_id) for r in result.accepted] == [
        ("early", PATIENT_B),
        ("last-of-b", PATIENT_B),
        ("first-of-a", PATIENT_A),
        ("today", PATIENT_A),
    ]


@pytest.mark.parametrize(
    ("assignments", "at", "fragment"),
    [
        (
            (Assignment(ASSIGNED_SINCE, None, PATIENT_A),),
            ASSIGNED_SINCE - timedelta(microseconds=1),
            "first assignment starts at 2026-10-01T00:00:00Z",
        ),
        (
            (
                Assignment(ASSIGNED_SINCE, HANDOVER - timedelta(days=1), PATIENT_A),
                Assignment(HANDOVER, None, PATIENT_B),
            ),
            HANDOVER - timedelta(hours=12),
            "between the assignment that ended at 2026-11-19T08:00:00Z and the next, starting "
            "at 2026-11-20T08:00:00Z",
        ),
        (
            (Assignment(ASSIGNED_SINCE, HANDOVER, PATIENT_A),),
            HANDOVER,
            "after the assignment that ended at 2026-11-20T08:00:00Z",
        ),
        ((), HANDOVER, "it has no assignments"),
    ],
    ids=["before-first", "in-gap", "after-last-ended", "never-assigned"],
)
def test_readings_no_assignment_covers_are_rejected(
    assignments: tuple[Assignment, ...], at: datetime, fragment: str
) -> None:
    context = DeviceContext(DEVICE_ID, "active", assignments)
    result = validate(reading(id="covered-or-not"), reading(time=rfc3339(at)), context=context)
    rejected = [r for r in result.rejected if r.index == 1]
    (rejection,) = rejected
    assert rejection.reason == "no_assignment"
    assert f"device {DEVICE_ID} was assigned to no patient at {rfc3339(at)}" in rejection.detail
    assert fragment in rejection.detail


# --- mixed payloads and the order of checks --------------------------------------------------


def test_a_mixed_payload_stores_the_good_and_rejects_the_bad_by_index() -> None:
    sent = [
        reading(id="ok-0"),
        reading(metric="glucose_blood", id="bad-1"),
        reading(metric="body_weight", value=80.5, unit="kg", id="ok-2"),
        reading(value="97", id="bad-3"),
        reading(metric="blood_pressure", value=..., systolic=118, diastolic=76, unit="mm[Hg]",
                id="ok-4"),
        reading(value=math.nan, id="bad-5"),
        reading(value=101, id="bad-6"),
        reading(time=rfc3339(RECEIVED + timedelta(hours=1)), id="bad-7"),
        reading(metric="body_temperature", value=99.5, unit="[degF]", id="ok-8"),
        reading(unit="mg/dL", id="bad-9"),
    ]  # fmt: skip
    result = validate(*sent)
    assert [r.client_reading_id for r in result.accepted] == [
        "ok-0",
        "ok-2",
        "ok-4:systolic",
        "ok-4:diastolic",
        "ok-8",
    ]
    assert [(r.index, r.reason) for r in result.rejected] == [
        (1, "unknown_metric"),
        (3, "invalid_reading"),
        (5, "non_finite_value"),
        (6, "out_of_range"),
        (7, "future_time"),
        (9, "unconvertible_unit"),
    ]
    assert [r.reading for r in result.rejected] == [
        sent[1],
        sent[3],
        {**sent[5], "value": pytest.approx(float("nan"), nan_ok=True)},
        sent[6],
        sent[7],
        sent[9],
    ]
    for stored in result.accepted:
        assert stored.device_id == DEVICE_ID
        assert stored.patient_id == PATIENT_A
        assert stored.received_at == RECEIVED
        assert stored.utc_offset_minutes == 0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        # unknown metric beats everything the reading also gets wrong later
        (reading(metric="nope", value=1e6, time=rfc3339(RECEIVED + timedelta(days=1))),
         "unknown_metric"),
        (reading(unit="mmol/L", value=1e6), "unconvertible_unit"),
        (reading(value=150, time=rfc3339(RECEIVED + timedelta(days=1))), "out_of_range"),
        (reading(value=150, time=rfc3339(ASSIGNED_SINCE - timedelta(days=1))), "out_of_range"),
        (reading(time=rfc3339(RECEIVED + timedelta(days=400))), "future_time"),
        (reading(time=rfc3339(ASSIGNED_SINCE - timedelta(days=400))), "too_old"),
        (reading(value="97", metric="nope"), "invalid_reading"),
    ],
)  # fmt: skip
def test_a_reading_gets_the_reason_of_its_earliest_failing_check(
    bad: dict[str, Any], reason: str
) -> None:
    result = validate(bad, oldest_allowed=ASSIGNED_SINCE - timedelta(days=365))
    assert [r.reason for r in result.rejected] == [reason]


def test_reasons_fit_the_quarantine_column() -> None:
    assert len(set(REASONS)) == len(REASONS) == 11
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", reason) for reason in REASONS)


def test_naive_datetimes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="received_at must be a timezone-aware"):
        validate_readings(
            decode_payload(json.dumps({"readings": [reading()]}).encode()),
            device=device(),
            catalogue=CATALOGUE,
            received_at=datetime(2026, 11, 24, 10, 0),  # naive on purpose
        )


def test_received_at_is_stored_in_utc() -> None:
    cet = RECEIVED.astimezone(timezone(timedelta(hours=1)))
    assert cet.hour == 11
    result = validate_readings(
        decode_payload(json.dumps({"readings": [reading()]}).encode()),
        device=device(),
        catalogue=CATALOGUE,
        received_at=cet,
    )
    (stored,) = result.accepted
    assert stored.received_at == RECEIVED
    assert stored.received_at.utcoffset() == timedelta(0)


def test_the_canonical_unit_needs_no_conversion_row() -> None:
    spo2 = CATALOGUE.metrics[4]
    bare = Catalogue({4: spo2}, {"spo2": 4, "orphan": 99}, {})
    result = validate(reading(), reading(metric="orphan"), catalogue=bare)
    (stored,) = result.accepted
    assert (stored.metric_id, stored.value) == (4, 97.0)
    # A name that points at no metric is unknown, not a crash.
    assert [(r.index, r.reason) for r in result.rejected] == [(1, "unknown_metric")]
