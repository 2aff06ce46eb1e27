"""Decoding device payloads: whole-payload failures, per-reading structural errors, time forms."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingest import payload as payload_module
from ingest.payload import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_PAYLOAD,
    DecodedPayload,
    PayloadError,
    RawReading,
    decode_payload,
)

DEVICE_ID = uuid.UUID("0b6f2c1e-6a3d-4f5e-9b1a-2c3d4e5f6a7b")
# 2026-11-24T09:00:00Z, written out independently of the code under test.
INSTANT = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
INSTANT_MS = 1_795_510_800_000


def reading(**members: Any) -> dict[str, Any]:
    """A valid SpO2 reading, with members replaced (or removed when given as ...)."""
    base: dict[str, Any] = {
        "metric": "spo2",
        "value": 97.0,
        "unit": "%",
        "time": "2026-11-24T09:00:00Z",
    }
    base.update(members)
    return {key: value for key, value in base.items() if value is not ...}


def body(*readings: Any, **envelope: Any) -> bytes:
    return json.dumps({**envelope, "readings": list(readings)}).encode()


def test_the_constant_matches_the_written_epoch() -> None:
    assert datetime.fromtimestamp(INSTANT_MS / 1000, UTC) == INSTANT


# --- whole-payload failures ------------------------------------------------------------------


def _padded_to(size: int) -> bytes:
    """A valid payload of exactly ``size`` bytes (padding in an ignored member)."""
    empty = body(reading(), padding="")
    return body(reading(), padding="x" * (size - len(empty)))


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        pytest.param(
            b'{"readings": [{"metric": "spo2", "val',
            "malformed_json",
            "not valid JSON",
            id="truncated",
        ),
        pytest.param(
            '{"readings": [{"metric": "Körpertemperatur"}]}'.encode("latin-1"),
            "malformed_json",
            "not UTF-8: byte 0xf6",
            id="latin-1",
        ),
        pytest.param(
            body(reading()).decode().encode("utf-16"), "malformed_json", "not UTF-8", id="utf-16"
        ),
        pytest.param(b"\xef\xbb\xbf" + body(reading()), "malformed_json", "BOM", id="bom"),
        pytest.param(b"", "malformed_json", "not valid JSON", id="empty-body"),
        pytest.param(
            b"[" * 100_000 + b"]" * 100_000,
            "malformed_json",
            "nested too deeply",
            id="deep-nesting",
        ),
        pytest.param(
            json.dumps([reading()]).encode(),
            "invalid_payload",
            "must be a JSON object with a 'readings' array, got array",
            id="top-level-array",
        ),
        pytest.param(b'"readings"', "invalid_payload", "got string", id="top-level-string"),
        pytest.param(
            b'{"device_id": null}', "invalid_payload", "no 'readings' array", id="missing-readings"
        ),
        pytest.param(
            b'{"readings": {"metric": "spo2"}}',
            "invalid_payload",
            "'readings' must be an array, got object",
            id="readings-object",
        ),
        pytest.param(
            b'{"readings": []}', "invalid_payload", "'readings' is empty", id="empty-readings"
        ),
        pytest.param(
            body(*[reading()] * (MAX_READINGS_PER_PAYLOAD + 1)),
            "payload_too_large",
            "1001 entries",
            id="1001-readings",
        ),
        pytest.param(
            _padded_to(MAX_PAYLOAD_BYTES + 1),
            "payload_too_large",
            f"{MAX_PAYLOAD_BYTES + 1} bytes",
            id="oversize",
        ),
        pytest.param(
            b"x" * (MAX_PAYLOAD_BYTES + 1),
            "payload_too_large",
            "at most 262144 bytes",
            id="oversize-checked-before-parsing",
        ),
        pytest.param(
            body(reading(), device_id="0b6f2c1e6a3d4f5e9b1a2c3d4e5f6a7b"),
            "invalid_payload",
            "'device_id' must be a UUID",
            id="device-id-no-hyphens",
        ),
        pytest.param(
            body(reading(), device_id=42), "invalid_payload", "got number 42", id="device-id-number"
        ),
    ],
)
def test_unusable_payloads_are_refused_whole(raw: bytes, reason: str, detail: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_payload(raw)
    assert caught.value.reason == reason
    assert detail in caught.value.detail
    assert isinstance(caught.value, ValueError)


def test_limits_are_inclusive() -> None:
    exactly_max_bytes = _padded_to(MAX_PAYLOAD_BYTES)
    assert len(exactly_max_bytes) == MAX_PAYLOAD_BYTES
    assert len(decode_payload(exactly_max_bytes).readings) == 1
    assert len(decode_payload(body(*[reading()] * MAX_READINGS_PER_PAYLOAD)).readings) == 1000


def test_mqtt_payloads_must_name_their_device() -> None:
    with pytest.raises(PayloadError, match="no 'device_id'") as caught:
        decode_payload(body(reading()), require_device_id=True)
    assert caught.value.reason == "invalid_payload"
    named = decode_payload(body(reading(), device_id=str(DEVICE_ID)), require_device_id=True)
    assert named.device_id == DEVICE_ID


def test_device_id_is_optional_and_parsed_in_any_case() -> None:
    assert decode_payload(body(reading())).device_id is None
    upper = decode_payload(body(reading(), device_id=str(DEVICE_ID).upper()))
    assert upper.device_id == DEVICE_ID


# --- per-reading structural errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        pytest.param(
            reading(value="97"),
            'readings[1].value must be a number, got string "97"',
            id="string-value",
        ),
        pytest.param(
            reading(value=True),
            "readings[1].value must be a number, got boolean true",
            id="bool-value",
        ),
        pytest.param(
            reading(value=None), "readings[1].value must be a number, got null", id="null-value"
        ),
        pytest.param(reading(value=...), "readings[1].value is missing", id="missing-value"),
        pytest.param(reading(value=[97]), "value must be a number, got an array", id="array-value"),
        pytest.param(reading(unit=...), "readings[1].unit is missing", id="missing-unit"),
        pytest.param(reading(unit=""), "readings[1].unit must be a non-empty", id="empty-unit"),
        pytest.param(
            reading(metric=2708),
            "readings[1].metric must be a non-empty string",
            id="number-metric",
        ),
        pytest.param(
            reading(time={"epoch": 1}), "readings[1].time must be an RFC 3339", id="object-time"
        ),
        pytest.param(reading(time=...), "readings[1].time is missing", id="missing-time"),
        pytest.param(reading(time="2026-11-24T10:00:00"), "has no UTC offset", id="naive-time"),
        pytest.param(
            reading(time="2026-11-24 10:00:00.5"), "has no UTC offset", id="naive-time-space"
        ),
        pytest.param(
            reading(time="yesterday"), '"yesterday" is not an RFC 3339', id="unparseable-time"
        ),
        pytest.param(reading(time="2026-11-24"), "is not an RFC 3339", id="date-only"),
        pytest.param(reading(time="2026-11-24T10:00+01:00"), "is not an RFC 3339", id="no-seconds"),
        pytest.param(
            reading(time="2026-11-24T10:00:00+0100"),
            "is not an RFC 3339",
            id="offset-without-colon",
        ),
        pytest.param(
            reading(time="2026-02-30T10:00:00Z"), "is not a valid date-time", id="february-30"
        ),
        pytest.param(
            reading(time="2026-11-24T10:00:00+19:00"), "UTC offset beyond", id="offset-too-large"
        ),
        pytest.param(
            reading(time="1969-12-31T23:59:59Z"), "is outside 1970-01-01", id="before-1970"
        ),
        pytest.param(reading(time=float(INSTANT_MS)), "readings[1].time must be", id="float-epoch"),
        pytest.param(reading(time=True), "got boolean true", id="bool-time"),
        pytest.param(reading(time=-1), "is not epoch milliseconds", id="negative-epoch"),
        pytest.param(reading(time=10**17), "is not epoch milliseconds", id="epoch-beyond-9999"),
        pytest.param(
            reading(id="x" * 129), "readings[1].id must be a string of 1 to 128", id="id-too-long"
        ),
        pytest.param(reading(id=""), "readings[1].id must be", id="id-empty"),
        pytest.param(reading(id=17), "readings[1].id must be a string", id="id-number"),
        pytest.param(reading(id="a\x00b"), "readings[1].id must be", id="id-with-nul"),
        pytest.param(reading(id="a\ud800b"), "readings[1].id must be", id="id-lone-surrogate"),
        pytest.param(
            reading(metric="blood_pressure", value=..., systolic=120),
            "readings[1].diastolic is missing",
            id="panel-without-diastolic",
        ),
        pytest.param(
            reading(metric="85354-9", value=..., systolic="120", diastolic=80),
            "readings[1].systolic must be a number",
            id="panel-string-systolic",
        ),
        pytest.param(
            reading(metric="blood_pressure", systolic=120, diastolic=80),
            "readings[1].value is not allowed",
            id="panel-with-value",
        ),
        pytest.param(
            reading(metric="blood_pressure", value=120),
            "readings[1].systolic is missing",
            id="panel-as-scalar",
        ),
        pytest.param(
            reading(metric="bp_systolic", systolic=120),
            "readings[1].systolic is only allowed",
            id="part-outside-panel",
        ),
        pytest.param(97, "readings[1] must be an object, got number 97", id="not-an-object"),
    ],
)
def test_a_malformed_reading_is_an_error_of_that_reading_only(bad: Any, detail: str) -> None:
    decoded = decode_payload(body(reading(id="good-0"), bad, reading(id="good-2")))
    assert [r.index for r in decoded.readings] == [0, 2]
    assert [r.client_id for r in decoded.readings] == ["good-0", "good-2"]
    assert len(decoded.errors) == 1
    error = decoded.errors[0]
    assert error.index == 1
    assert detail in error.detail
    # The quarantine gets the reading as sent.
    assert error.raw == (bad if isinstance(bad, dict) else json.dumps(bad).encode())
    # Details go into a text column: no NUL, no surrogates, even when the input had them.
    error.detail.encode("utf-8")
    assert "\x00" not in error.detail


def test_every_problem_of_a_reading_is_named() -> None:
    decoded = decode_payload(body(reading(value="97", unit=..., time="2026-11-24T10:00:00")))
    (error,) = decoded.errors
    assert "readings[0].value must be a number" in error.detail
    assert "readings[0].unit is missing" in error.detail
    assert "readings[0].time" in error.detail
    assert "no UTC offset" in error.detail


def test_long_input_is_cut_short_in_the_detail() -> None:
    decoded = decode_payload(body(reading(time="z" * 10_000)))
    (error,) = decoded.errors
    assert "zzz..." in error.detail
    assert len(error.detail) < 300


# --- times -----------------------------------------------------------------------------------


def _only(decoded: DecodedPayload) -> Any:
    assert not decoded.errors, decoded.errors
    (single,) = decoded.readings
    return single


@pytest.mark.parametrize(
    ("time", "offset_minutes"),
    [
        (INSTANT_MS, None),
        ("2026-11-24T09:00:00Z", 0),
        ("2026-11-24t09:00:00z", 0),
        ("2026-11-24 09:00:00Z", 0),
        ("2026-11-24T10:00:00+01:00", 60),
        ("2026-11-24T03:30:00-05:30", -330),
        ("2026-11-25T03:00:00+18:00", 1080),
        ("2026-11-24T09:00:00-00:00", None),  # RFC 3339: UTC, local offset unknown
    ],
)
def test_every_time_form_gives_the_same_utc_instant(
    time: str | int, offset_minutes: int | None
) -> None:
    decoded = _only(decode_payload(body(reading(time=time))))
    assert decoded.measured_at == INSTANT
    assert decoded.measured_at.utcoffset() == timedelta(0)
    assert decoded.utc_offset_minutes == offset_minutes


def test_fractional_seconds_are_kept_to_the_microsecond() -> None:
    millis = _only(decode_payload(body(reading(time=INSTANT_MS + 123))))
    assert millis.measured_at == INSTANT + timedelta(milliseconds=123)
    nanos = _only(decode_payload(body(reading(time="2026-11-24T09:00:00.123456789Z"))))
    assert nanos.measured_at == INSTANT + timedelta(microseconds=123456)


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "check"),
    [
        ("NaN", math.isnan),
        ("Infinity", lambda v: v == math.inf),
        ("-Infinity", lambda v: v == -math.inf),
        ("1e999", lambda v: v == math.inf),
        ("-1e999", lambda v: v == -math.inf),
        ("1" + "0" * 400, lambda v: v == math.inf),
    ],
)
def test_non_finite_numbers_decode_for_validation_to_reject(literal: str, check: Any) -> None:
    raw = body(reading(value="PLACEHOLDER")).replace(b'"PLACEHOLDER"', literal.encode())
    value = _only(decode_payload(raw)).value
    assert isinstance(value, float)
    assert check(value)


def test_integers_become_floats_and_unknown_members_are_ignored() -> None:
    sent = reading(value=97, id="r-1", firmware="2.1")
    decoded = _only(decode_payload(body(sent, gateway="hub-3")))
    assert type(decoded.value) is float
    assert decoded.value == 97.0
    assert decoded.client_id == "r-1"
    assert decoded.raw == sent
    assert not decoded.is_panel


def test_a_bp_panel_decodes_as_one_reading_with_two_parts() -> None:
    sent = reading(metric="85354-9", value=..., systolic=128, diastolic=82.5, unit="mm[Hg]")
    decoded = _only(decode_payload(body(sent)))
    assert decoded.is_panel
    assert decoded.value is None
    assert (decoded.systolic, decoded.diastolic) == (128.0, 82.5)
    assert decoded.metric == "85354-9"


@pytest.mark.parametrize(
    "sent",
    [
        reading(),
        reading(value=61, time=INSTANT_MS, id="r-1"),
        reading(value=2**60),
        reading(value=-(10**400)),
        reading(time="2026-11-24t10:00:00.5+01:00", id="ünïcode"),
        reading(time="2026-11-24T09:00:00-00:00", id="x" * 128),
        reading(metric="blood_pressure", value=..., systolic=120, diastolic=80.5),
    ],
)
def test_the_fast_path_agrees_with_the_full_checks(sent: dict[str, Any]) -> None:
    fast = payload_module._decode_reading(4, sent)
    full = payload_module._decode_reading_fully(4, sent)
    assert isinstance(fast, RawReading)
    assert fast == full


# --- the column-by-column path and the JSON parsers ------------------------------------------


@pytest.mark.parametrize(
    "readings",
    [
        pytest.param([reading()], id="one"),
        pytest.param(
            [reading(value=60 + n, time=INSTANT_MS + n * 1000) for n in range(500)],
            id="epoch-ms",
        ),
        pytest.param(
            [
                reading(time="2026-11-24T10:00:00+01:00", id="r-1"),
                reading(time="2026-11-24t09:00:00.5z"),
                reading(time="2026-11-24T09:00:00-00:00", id="x" * 128, value=2**53),
                reading(time=INSTANT_MS, value=-(2**53), metric="heart_rate", unit="/min"),
            ],
            id="mixed-times-ids-and-bounds",
        ),
    ],
)
def test_ordinary_payloads_decode_column_by_column_as_reading_by_reading(
    readings: list[dict[str, Any]],
) -> None:
    assert payload_module._decode_ordinary(readings) is not None, "the column path is taken"
    decoded = decode_payload(body(*readings))
    expected = [payload_module._decode_reading(n, item) for n, item in enumerate(readings)]
    assert decoded.readings == expected
    assert decoded.errors == []


@pytest.mark.parametrize(
    "readings",
    [
        pytest.param([reading(), reading(value="97")], id="a-bad-value"),
        pytest.param([reading(), reading(value=True)], id="a-boolean"),
        pytest.param([reading(), reading(value=2**53 + 1)], id="an-integer-beyond-a-double"),
        pytest.param([reading(), reading(time="2026-11-24T09:00:00")], id="no-offset"),
        pytest.param([reading(), reading(time=-1)], id="before-1970"),
        pytest.param([reading(), reading(id="ünïcode")], id="non-ascii-id"),
        pytest.param([reading(), reading(id="")], id="empty-id"),
        pytest.param([reading(), reading(metric=["spo2"])], id="unhashable-metric"),
        pytest.param([reading(), reading(unit="")], id="empty-unit"),
        pytest.param([reading(), reading(systolic=120)], id="stray-systolic"),
        pytest.param(
            [reading(), reading(metric="blood_pressure", value=..., systolic=1, diastolic=2)],
            id="a-panel",
        ),
        pytest.param([reading(), "not an object"], id="not-an-object"),
    ],
)
def test_other_payloads_decode_reading_by_reading(readings: list[Any]) -> None:
    """Anything but ordinary readings leaves the column path, and the result is unchanged."""
    assert payload_module._decode_ordinary(readings) is None
    decoded = decode_payload(body(*readings))
    results = [payload_module._decode_reading(n, item) for n, item in enumerate(readings)]
    assert decoded.readings == [r for r in results if isinstance(r, RawReading)]
    assert decoded.errors == [r for r in results if not isinstance(r, RawReading)]


@pytest.mark.parametrize(
    ("literal", "member", "shown"),
    [
        # orjson would read these as floats (1e+20): the standard library's reading decides.
        ("100000000000000000000", "time", "time 100000000000000000000 is not epoch milliseconds"),
        ("-100000000000000000000", "id", "got number -100000000000000000000"),
        ("18446744073709551616", "metric", "got number 18446744073709551616"),
    ],
)
def test_integers_beyond_64_bits_are_read_as_the_reference_reads_them(
    literal: str, member: str, shown: str
) -> None:
    raw = body(reading(**{member: "PLACEHOLDER"})).replace(b'"PLACEHOLDER"', literal.encode())
    (error,) = decode_payload(raw).errors
    assert shown in error.detail


def test_a_lone_surrogate_in_a_client_id_is_refused_for_that_reading_only() -> None:
    """orjson refuses the whole document; the standard library reads it, as the contract says."""
    raw = b'{"readings": [' + body(reading())[14:-2] + b', {"metric": "spo2", "value": 97, '
    raw += b'"unit": "%", "time": "2026-11-24T09:00:00Z", "id": "\\ud800"}]}'
    decoded = decode_payload(raw)
    assert [r.index for r in decoded.readings] == [0]
    (error,) = decoded.errors
    assert (error.index, "readings[1].id") == (1, error.detail[: len("readings[1].id")])


# --- ambiguous JSON: a member name repeated in one object --------------------------------------

_OK = b'{"metric": "spo2", "value": 97, "unit": "%", "time": "2026-11-24T09:00:00Z"}'


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        # Two readings arrays: orjson kept the second, so 2 of 3 readings were stored silently.
        pytest.param(
            b'{"readings": [' + _OK + b'], "readings": [' + _OK + b", " + _OK + b"]}",
            "readings",
            id="two-readings-arrays",
        ),
        pytest.param(
            b'{"readings": [{"metric": "spo2", "value": 90, "value": 97, "unit": "%", '
            b'"time": "2026-11-24T09:00:00Z"}]}',
            "value",
            id="two-values-in-a-reading",
        ),
        pytest.param(
            b'{"readings": [' + _OK[:-1] + b', "ext": {"a": 1, "a": 2}}]}',
            "a",
            id="nested-in-an-ignored-member",
        ),
        pytest.param(
            b'{"device_id": "' + str(DEVICE_ID).encode() + b'", "device_\\u0069d": "x", '
            b'"readings": [' + _OK + b"]}",
            "device_id",
            id="same-name-spelt-with-an-escape",
        ),
        pytest.param(
            b'{"readings": [' + _OK[:-1] + b', "n": "a\\u003ab", "id": "1", "id": "2"}]}',
            "id",
            id="escaped-colon-cannot-hide-a-repeat",
        ),
        pytest.param(
            b'{"readings": [' + _OK[:-1] + b', "value": NaN}]}', "value", id="reference-path"
        ),
    ],
)
def test_a_repeated_member_refuses_the_payload_whole(raw: bytes, name: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_payload(raw)
    assert caught.value.reason == "duplicate_member"
    assert f'member "{name}" appears more than once' in caught.value.detail


def test_colons_inside_strings_are_not_mistaken_for_repeats() -> None:
    raw = b'{"readings": [' + _OK[:-1] + b', "note": "a:b:\\u003a", "c:d": ":"}]}'
    assert len(decode_payload(raw).readings) == 1
