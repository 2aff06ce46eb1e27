"""Device payloads: the bytes of one HTTP body or MQTT message, decoded into readings.

Wire format (the same JSON over HTTP and MQTT)::

    {
      "device_id": "0b6f2c1e-6a3d-4f5e-9b1a-2c3d4e5f6a7b",
      "readings": [
        {"metric": "spo2", "value": 97.0, "unit": "%",
         "time": "2026-11-24T10:00:00+01:00", "id": "r-1"},
        {"metric": "blood_pressure", "systolic": 128, "diastolic": 82, "unit": "mm[Hg]",
         "time": 1764000000000, "id": "bp-7"}
      ]
    }

Envelope:

- The body is at most ``MAX_PAYLOAD_BYTES`` (256 KiB) of UTF-8 JSON (no byte order mark) whose
  top level is an object. Members other than those below are ignored.
- ``device_id``: the device's UUID in canonical 8-4-4-4-12 hex form. Optional over HTTP (the
  bearer token identifies the device; when given it must be that device); required over MQTT,
  where the caller cross-checks it with the topic (``decode_payload(raw, require_device_id=True)``).
- ``readings``: an array of 1 to ``MAX_READINGS_PER_PAYLOAD`` (1000) reading objects.

A reading:

- ``metric`` (string, required): a catalogue code (``spo2``), its LOINC code (``2708-6``) or an
  alias (``59408-5``). Case-sensitive.
- ``value`` (JSON number, required): ``true``/``false`` and numeric strings are refused. ``NaN``
  and ``Infinity`` literals (which JavaScript serialisers never emit but some C firmware does) and
  numbers that overflow a double (``1e999``) are read, then rejected as ``non_finite_value``.
- ``unit`` (string, required): UCUM, e.g. ``%``, ``/min``, ``mm[Hg]``, ``Cel``, ``[degF]``, ``kg``,
  ``[lb_av]``, ``mg/dL``, ``mmol/L``. Converted to the metric's canonical unit; there is no default
  unit, because guessing between Cel and [degF] or kg and [lb_av] is unsafe.
- ``time`` (required): either an RFC 3339 date-time *with* a UTC offset
  (``2026-11-24T10:00:00+01:00``, ``2026-11-24T09:00:00Z``; fractional seconds allowed and cut to
  microseconds; offset at most +-18:00, the offset is kept as ``utc_offset_minutes``; ``-00:00``
  means "local offset unknown" as in RFC 3339 and keeps none), or an integer count of
  milliseconds since 1970-01-01T00:00:00Z (no offset is known then). Times
  without an offset are refused: a local time is ambiguous. Times before 1970 or after year 9999
  are refused.
- ``id`` (string, optional): the device's own id for the reading, 1 to 128 characters (no NUL).
- Blood pressure may be sent as a panel: ``metric`` ``blood_pressure`` or LOINC ``85354-9`` with
  ``systolic`` and ``diastolic`` numbers instead of ``value`` and one ``unit`` for both. It is
  stored as two readings (``bp_systolic`` 8480-6 and ``bp_diastolic`` 8462-4) whose client ids
  are ``<id>:systolic`` and ``<id>:diastolic``. The two parts may equally be sent as two ordinary
  readings with those metrics.
- Other members of a reading are ignored.

Failures:

- Whole payload (nothing is stored): ``PayloadError`` with ``reason`` ``payload_too_large`` (more
  than 256 KiB or more than 1000 readings; HTTP 413), ``malformed_json`` (not UTF-8, not JSON;
  HTTP 400), ``duplicate_member`` (an object anywhere in the payload names one member twice,
  e.g. two ``readings`` arrays or two ``value`` members in a reading: RFC 8259 leaves such JSON
  open to interpretation, and reading it one way would drop what the other way holds; HTTP 422)
  or ``invalid_payload`` (JSON, but not an object with a non-empty ``readings`` array, or a bad
  ``device_id``; HTTP 422).
- One reading (the other readings of the payload are still stored): a structural problem (wrong
  type, missing member, time without offset, ...) becomes a ``ReadingError`` in
  ``DecodedPayload.errors``, reported by validation with reason ``invalid_reading`` and a detail
  naming every bad member, e.g. ``readings[3].value must be a number, got string "97"``.

Decoding uses orjson plus hand-written checks rather than a pydantic model: a model over the
whole envelope fails the whole payload on one bad reading, validating each reading with its own
adapter costs as much as the checks below, and the details here name the member in wire terms.
orjson keeps the last of repeated members without a word, so a cheap count (colons in the bytes
against colons in orjson's re-serialisation) tells when the reference must look. orjson is
strict where this contract is lenient (it refuses NaN/Infinity literals, numbers that
overflow a double and lone surrogates in strings) and reads integer literals beyond 64 bits as
floats; a payload it refuses, or that holds a run of 19 or more digits, is therefore parsed by
the standard library's json module, which is the reference for everything above (its answers,
including every error message, are the ones given).

The structurally valid readings come out as columns (``DecodedReadings``): when every reading of
the payload is an ordinary one (a scalar reading, well-typed members, no panel) they are built
column by column without a per-reading function call; any other payload is decoded reading by
reading (``_decode_reading``), which gives the same result.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import orjson

from ingest.rfc3339 import parse_rfc3339_column
from ingest.strict_json import DuplicateMemberError, json_type, loads_strict

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS_PER_PAYLOAD = 1000
MAX_CLIENT_ID_CHARS = 128
MAX_UTC_OFFSET_MINUTES = 18 * 60  # rpm.readings.utc_offset_minutes CHECK

# Codes of the blood-pressure panel; validation maps its parts to bp_systolic / bp_diastolic.
BP_PANEL_METRICS = frozenset({"blood_pressure", "85354-9"})
BP_PANEL_PARTS = ("systolic", "diastolic")

PayloadErrorReason = Literal[
    "payload_too_large", "malformed_json", "invalid_payload", "duplicate_member"
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MAX_EPOCH_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // _ONE_US
_MAX_EPOCH_MS = _MAX_EPOCH_US // 1000

# RFC 3339 section 5.6 (a space for "T" as its note allows). ASCII digits only: \d alone would
# accept other scripts' digits. The offset is optional here only to tell "no offset" apart from
# "not a date-time" in the detail.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)


def _offset_table() -> dict[str, int | None]:
    """Every RFC 3339 offset within +-18:00, to its minutes (a dict lookup per reading).

    -00:00 is RFC 3339's "the time is UTC, the local offset is unknown" (section 4.3): None.
    """
    table: dict[str, int | None] = {"Z": 0, "z": 0}
    for minutes in range(-MAX_UTC_OFFSET_MINUTES, MAX_UTC_OFFSET_MINUTES + 1):
        hours, rest = divmod(abs(minutes), 60)
        table[f"{'-' if minutes < 0 else '+'}{hours:02d}:{rest:02d}"] = minutes
    table["-00:00"] = None
    return table


_OFFSET_MINUTES = _offset_table()
# Integers a double holds exactly; larger ones take the full path (which handles overflow).
_EXACT_INT = 2**53

# Explicit, although it is json's default: these literals are read as floats on purpose so that
# validation rejects that one reading as non_finite_value instead of failing the payload.
_NON_FINITE_LITERALS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# orjson reads integer literals outside [-2**63, 2**64) as floats; those need 19+ digits. Found
# by mapping every digit to 0 and searching for 19 zeros: two linear C passes, where a regex
# such as [0-9]{19} backtracks at every digit of every number (about 2 us per reading).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


class PayloadError(ValueError):
    """The payload as a whole cannot be used; nothing in it is stored."""

    def __init__(self, reason: PayloadErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: PayloadErrorReason = reason
        self.detail = detail


@dataclass(slots=True)
class RawReading:
    """One structurally valid reading, still in the sender's metric name and unit.

    Exactly one of ``value`` and (``systolic``, ``diastolic``) is set. Values may be NaN or
    infinite; validation rejects those. Treat as immutable; not declared frozen because it is
    built once per reading on the hot path and a frozen dataclass's __init__ costs about 1 us
    more (it sets every field through object.__setattr__).
    """

    index: int  # position in the payload's readings array
    metric: str
    unit: str
    time_us: int  # measurement time, microseconds since 1970-01-01T00:00:00Z
    utc_offset_minutes: int | None  # None when the time came as epoch milliseconds
    value: float | None
    systolic: float | None
    diastolic: float | None
    client_id: str | None
    raw: dict[str, Any]  # the reading's JSON object as received, for the quarantine

    @property
    def is_panel(self) -> bool:
        return self.value is None

    @property
    def measured_at(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.time_us)


@dataclass(frozen=True, slots=True)
class ReadingError:
    """A reading that is not usable as sent (reported as ``invalid_reading``)."""

    index: int
    detail: str
    raw: dict[str, Any] | bytes  # the JSON object, or the re-serialised value if not an object


@dataclass(frozen=True, eq=False, slots=True)
class DecodedReadings:
    """The structurally valid readings of a payload as columns, in payload order.

    Row i is one reading. For a BP panel (``is_panel``) ``systolic`` and ``diastolic`` hold its
    parts and ``value`` is meaningless; for any other reading it is the other way round.
    """

    index: npt.NDArray[np.intp]  # position in the payload's readings array
    metric: list[str]
    unit: list[str]
    time_us: npt.NDArray[np.int64]  # microseconds since 1970-01-01T00:00:00Z
    utc_offset: npt.NDArray[np.int16]  # minutes; meaningless where offset_unknown
    offset_unknown: npt.NDArray[np.bool_]
    value: npt.NDArray[np.float64]
    is_panel: npt.NDArray[np.bool_]
    systolic: npt.NDArray[np.float64]
    diastolic: npt.NDArray[np.float64]
    client_id: list[str | None] | None  # None when no reading has one
    items: list[Any]  # the payload's readings array as received (raw JSON of reading i)

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, row: int) -> dict[str, Any]:
        item: dict[str, Any] = self.items[int(self.index[row])]
        return item

    def reading(self, row: int) -> RawReading:
        """Row ``row`` as a RawReading (not for the hot path)."""
        panel = bool(self.is_panel[row])
        return RawReading(
            int(self.index[row]),
            self.metric[row],
            self.unit[row],
            int(self.time_us[row]),
            None if self.offset_unknown[row] else int(self.utc_offset[row]),
            None if panel else float(self.value[row]),
            float(self.systolic[row]) if panel else None,
            float(self.diastolic[row]) if panel else None,
            None if self.client_id is None else self.client_id[row],
            self.raw(row),
        )

    @classmethod
    def from_readings(cls, readings: list[RawReading], items: list[Any]) -> DecodedReadings:
        ids = [r.client_id for r in readings]
        return cls(
            index=np.array([r.index for r in readings], dtype=np.intp),
            metric=[r.metric for r in readings],
            unit=[r.unit for r in readings],
            time_us=np.array([r.time_us for r in readings], dtype=np.int64),
            utc_offset=np.array([r.utc_offset_minutes or 0 for r in readings], dtype=np.int16),
            offset_unknown=np.array(
                [r.utc_offset_minutes is None for r in readings], dtype=np.bool_
            ),
            value=np.array([0.0 if r.value is None else r.value for r in readings]),
            is_panel=np.array([r.value is None for r in readings], dtype=np.bool_),
            systolic=np.array([r.systolic or 0.0 for r in readings], dtype=np.float64),
            diastolic=np.array([r.diastolic or 0.0 for r in readings], dtype=np.float64),
            client_id=ids if any(i is not None for i in ids) else None,
            items=items,
        )


@dataclass(frozen=True, slots=True)
class DecodedPayload:
    device_id: uuid.UUID | None
    columns: DecodedReadings
    errors: list[ReadingError]  # in payload order

    @property
    def readings(self) -> list[RawReading]:
        """The structurally valid readings one by one (not for the hot path)."""
        return [self.columns.reading(row) for row in range(len(self.columns))]

    @property
    def reading_count(self) -> int:
        """Entries in the payload's readings array (a BP panel counts once)."""
        return len(self.columns) + len(self.errors)


def decode_payload(raw: bytes, *, require_device_id: bool = False) -> DecodedPayload:
    """Parse and structurally check one payload; raise ``PayloadError`` if none of it is usable.

    ``require_device_id``: set for MQTT, where the payload must name its device.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            "payload_too_large",
            f"payload is {len(raw)} bytes; at most {MAX_PAYLOAD_BYTES} bytes are accepted "
            "(split the readings over several payloads)",
        )
    document = _parse_fast(raw)
    if document is _UNPARSED:
        document = _parse_reference(raw)
    return _check_document(document, require_device_id=require_device_id)


_UNPARSED = object()


def _parse_fast(raw: bytes) -> Any:
    """orjson's reading of ``raw``, or ``_UNPARSED`` where it may differ from the reference."""
    if _NINETEEN_DIGITS in raw.translate(_DIGITS_TO_ZERO):
        return _UNPARSED
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNPARSED
    if not _surely_unique_members(raw, document):
        return _UNPARSED  # the reference decides, naming the repeated member
    return document


def _surely_unique_members(raw: bytes, document: Any) -> bool:
    """True when no object of ``raw`` repeats a member name (orjson keeps the last silently).

    Counting colons decides without walking the document in Python: each member of each
    object is written with one colon, and a colon inside a string is either written as is
    (counted on both sides) or escaped as \\u003a in ``raw`` (which orjson writes back as a
    plain colon). So ``raw`` has more colons than orjson's re-serialisation only if members
    were dropped, and the same number while ``raw`` has no \\u escape only if none were.
    False means "not sure": the standard library's parse then checks every object.
    """
    try:
        written = orjson.dumps(document)
    except orjson.JSONEncodeError:
        return False
    return raw.count(b":") == written.count(b":") and b"\\u" not in raw


def _parse_reference(raw: bytes) -> Any:
    """The standard library's reading of ``raw``: the contract's reference, errors included."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            "malformed_json",
            f"payload is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason})",
        ) from None
    try:
        return loads_strict(text, parse_constant=_NON_FINITE_LITERALS.__getitem__)
    except DuplicateMemberError as exc:
        raise PayloadError(
            "duplicate_member",
            f"member {json_excerpt(exc.name)} appears more than once in one object: "
            "ambiguous JSON (RFC 8259 section 4) is refused whole, never read one way",
        ) from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            "malformed_json",
            f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise PayloadError("malformed_json", "payload is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's 4300-digit limit
        raise PayloadError("malformed_json", f"payload is not valid JSON: {exc}") from None


def _check_document(document: Any, *, require_device_id: bool) -> DecodedPayload:
    if type(document) is not dict:
        raise PayloadError(
            "invalid_payload",
            f"payload must be a JSON object with a 'readings' array, got {json_type(document)}",
        )
    device_id = _decode_device_id(document.get("device_id"), required=require_device_id)
    readings = document.get("readings")
    if readings is None:
        raise PayloadError("invalid_payload", "payload has no 'readings' array")
    if type(readings) is not list:
        raise PayloadError(
            "invalid_payload", f"'readings' must be an array, got {json_type(readings)}"
        )
    if not readings:
        raise PayloadError(
            "invalid_payload",
            f"'readings' is empty; send 1 to {MAX_READINGS_PER_PAYLOAD} readings",
        )
    if len(readings) > MAX_READINGS_PER_PAYLOAD:
        raise PayloadError(
            "payload_too_large",
            f"'readings' has {len(readings)} entries; at most {MAX_READINGS_PER_PAYLOAD} are "
            "accepted per payload",
        )

    columns = _decode_ordinary(readings)
    if columns is not None:
        return DecodedPayload(device_id, columns, [])
    decoded: list[RawReading] = []
    errors: list[ReadingError] = []
    for index, item in enumerate(readings):
        result = _decode_reading(index, item)
        if isinstance(result, RawReading):
            decoded.append(result)
        else:
            errors.append(result)
    return DecodedPayload(device_id, DecodedReadings.from_readings(decoded, readings), errors)


_ORDINARY_VALUE_TYPES = frozenset({float, int})


def _decode_ordinary(items: list[Any]) -> DecodedReadings | None:
    """Columns of ``items`` if every one is an ordinary reading, else None.

    An ordinary reading is one that ``_decode_reading``'s fast path accepts: an object with a
    non-empty string metric (not a BP panel) and unit, a number value (an integer within
    +-2**53, which a double holds exactly), no systolic/diastolic, an acceptable time and an
    ASCII client id without NUL, or none. The checks run column by column, so the result
    equals what ``_decode_reading`` gives for each item.
    """
    # One long function on purpose: it is the decoder's hot path, each check a C-level pass
    # over one column, and the early returns to the per-item path read best in one place.
    count = len(items)
    if set(map(type, items)) != {dict}:
        return None
    # map() with dict methods keeps the per-item work in C: no Python frame per reading.
    metrics = list(map(dict.get, items, repeat("metric")))
    units = list(map(dict.get, items, repeat("unit")))
    try:
        # Few distinct names per payload: check each once. (Only strings equal strings, so a
        # set of good strings decides for every item.)
        names = set(metrics)
        unit_names = set(units)
    except TypeError:  # an unhashable member (array or object)
        return None
    if not all(type(m) is str and m and m not in BP_PANEL_METRICS for m in names):
        return None
    if not all(type(u) is str and u for u in unit_names):
        return None
    if any(map(dict.__contains__, items, repeat("systolic"))) or any(
        map(dict.__contains__, items, repeat("diastolic"))
    ):
        return None

    values = list(map(dict.get, items, repeat("value")))
    value_types = set(map(type, values))
    if not value_types <= _ORDINARY_VALUE_TYPES:
        return None
    if int in value_types and any(
        type(v) is int and not -_EXACT_INT <= v <= _EXACT_INT for v in values
    ):
        return None
    value = np.array(values, dtype=np.float64)

    times = list(map(dict.get, items, repeat("time")))
    time_types = set(map(type, times))
    if time_types == {int}:
        try:
            millis = np.array(times, dtype=np.int64)
        except OverflowError:
            return None
        if not ((millis >= 0) & (millis <= _MAX_EPOCH_MS)).all():
            return None
        time_us = millis * 1000
        offsets = np.zeros(count, dtype=np.int16)
        offset_unknown = np.ones(count, dtype=np.bool_)
    elif time_types == {str} and (
        columns := parse_rfc3339_column(
            cast(list[str], times),
            max_epoch_us=_MAX_EPOCH_US,
            max_offset_minutes=MAX_UTC_OFFSET_MINUTES,
        )
    ):
        time_us, offsets, offset_unknown = columns
    else:
        parsed = [_parse_time(t) for t in times]
        if None in parsed:
            return None
        good = cast(list[tuple[int, int | None]], parsed)
        time_us = np.array([p[0] for p in good], dtype=np.int64)
        offset_list = [p[1] for p in good]
        offsets = np.array([o or 0 for o in offset_list], dtype=np.int16)
        offset_unknown = np.array([o is None for o in offset_list], dtype=np.bool_)

    ids = list(map(dict.get, items, repeat("id")))
    client_id: list[str | None] | None = None
    if set(map(type, ids)) != {type(None)}:
        if not all(
            i is None
            or (
                type(i) is str
                and 0 < len(i) <= MAX_CLIENT_ID_CHARS
                and i.isascii()
                and "\x00" not in i
            )
            for i in ids
        ):
            return None
        client_id = ids

    return DecodedReadings(
        index=np.arange(count, dtype=np.intp),
        metric=cast(list[str], metrics),
        unit=cast(list[str], units),
        time_us=time_us,
        utc_offset=offsets,
        offset_unknown=offset_unknown,
        value=value,
        is_panel=np.zeros(count, dtype=np.bool_),
        systolic=np.zeros(count, dtype=np.float64),
        diastolic=np.zeros(count, dtype=np.float64),
        client_id=client_id,
        items=items,
    )


def _decode_device_id(value: object, *, required: bool) -> uuid.UUID | None:
    if value is None:
        if required:
            raise PayloadError("invalid_payload", "payload has no 'device_id'")
        return None
    if type(value) is not str or _CANONICAL_UUID.fullmatch(value) is None:
        raise PayloadError(
            "invalid_payload",
            "'device_id' must be a UUID string such as '0b6f2c1e-6a3d-4f5e-9b1a-2c3d4e5f6a7b', "
            f"got {_show(value)}",
        )
    return uuid.UUID(value)


def _decode_reading(index: int, item: object) -> RawReading | ReadingError:
    """The common case (a scalar reading with nothing wrong) in as few steps as possible.

    Anything else goes to ``_decode_reading_fully``, which is the reference: this fast path
    accepts only readings that the full path accepts, and gives the same result for them.
    """
    if type(item) is dict:
        metric = item.get("metric")
        unit = item.get("unit")
        value = item.get("value")
        client_id = item.get("id")
        if (
            type(metric) is str
            and metric
            and metric not in BP_PANEL_METRICS
            and type(unit) is str
            and unit
            and (
                type(value) is float or (type(value) is int and -_EXACT_INT <= value <= _EXACT_INT)
            )
            and "systolic" not in item
            and "diastolic" not in item
            and (
                client_id is None
                or (
                    type(client_id) is str
                    and 0 < len(client_id) <= MAX_CLIENT_ID_CHARS
                    and client_id.isascii()
                    and "\x00" not in client_id
                )
            )
        ):
            time = _parse_time(item.get("time"))
            if time is not None:
                return RawReading(
                    index, metric, unit, time[0], time[1], float(value), None, None, client_id, item
                )
    return _decode_reading_fully(index, item)


def _decode_reading_fully(index: int, item: object) -> RawReading | ReadingError:
    """Every check, naming every problem of the reading in its detail."""
    where = f"readings[{index}]"
    if type(item) is not dict:
        return ReadingError(
            index,
            f"{where} must be an object, got {_show(item)}",
            json.dumps(item).encode(),
        )
    problems: list[str] = []

    metric = item.get("metric")
    if type(metric) is not str or not metric:
        problems.append(
            _problem(where, "metric", item, "a non-empty string (catalogue code, LOINC or alias)")
        )
    unit = item.get("unit")
    if type(unit) is not str or not unit:
        problems.append(_problem(where, "unit", item, "a non-empty UCUM unit string"))

    value = systolic = diastolic = None
    if type(metric) is str and metric in BP_PANEL_METRICS:  # an array is unhashable
        systolic = _number(item.get("systolic"))
        diastolic = _number(item.get("diastolic"))
        if systolic is None:
            problems.append(_problem(where, "systolic", item, "a number"))
        if diastolic is None:
            problems.append(_problem(where, "diastolic", item, "a number"))
        if "value" in item:
            problems.append(
                f"{where}.value is not allowed for the blood pressure panel {metric!r}: "
                "send 'systolic' and 'diastolic'"
            )
    else:
        value = _number(item.get("value"))
        if value is None:
            problems.append(_problem(where, "value", item, "a number"))
        for part in BP_PANEL_PARTS:
            if part in item:
                problems.append(
                    f"{where}.{part} is only allowed with metric 'blood_pressure' or '85354-9'"
                )

    time = _parse_time(item.get("time"))
    if time is None:
        problems.append(_time_problem(where, item))

    client_id = item.get("id")
    if client_id is not None and not _valid_client_id(client_id):
        problems.append(
            _problem(
                where,
                "id",
                item,
                f"a string of 1 to {MAX_CLIENT_ID_CHARS} characters without NUL or unpaired "
                "surrogates",
            )
        )

    if problems or time is None:
        return ReadingError(index, "; ".join(problems), item)
    return RawReading(
        index,
        cast(str, metric),  # checked above
        cast(str, unit),
        time[0],
        time[1],
        value,
        systolic,
        diastolic,
        client_id,
        item,
    )


def _number(value: object) -> float | None:
    """A JSON number as float; None for anything else (booleans and strings included)."""
    # type() rather than isinstance(): bool is an int subclass, and true is not a number here.
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # an integer literal beyond a double: same as 1e999
            return math.inf if value > 0 else -math.inf
    return None


def _parse_time(value: object) -> tuple[int, int | None] | None:
    """(microseconds since the epoch, UTC offset in minutes), or None if not acceptable."""
    if type(value) is int:
        return (value * 1000, None) if 0 <= value <= _MAX_EPOCH_MS else None
    if type(value) is not str:
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    offset = match[1]
    if offset not in _OFFSET_MINUTES:  # no offset, or beyond +-18:00
        return None
    try:
        # fromisoformat does not take the lower-case t/z that RFC 3339 allows.
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        return None
    time_us = (parsed - EPOCH) // _ONE_US
    if not 0 <= time_us <= _MAX_EPOCH_US:
        return None
    return time_us, _OFFSET_MINUTES[offset]


def _time_problem(where: str, item: dict[str, Any]) -> str:
    """Why ``_parse_time`` refused the reading's time."""
    value = item.get("time")
    if type(value) is int:
        return (
            f"{where}.time {value} is not epoch milliseconds between 0 (1970-01-01) and "
            f"{_MAX_EPOCH_MS} (9999-12-31)"
        )
    if type(value) is not str:
        return _problem(
            where,
            "time",
            item,
            "an RFC 3339 date-time with a UTC offset or integer epoch milliseconds",
        )
    shown = json_excerpt(value)
    match = _RFC3339.fullmatch(value)
    if match is None:
        return (
            f"{where}.time {shown} is not an RFC 3339 date-time "
            "(e.g. 2026-11-24T10:00:00+01:00) nor integer epoch milliseconds"
        )
    if match[1] is None:
        return (
            f"{where}.time {shown} has no UTC offset; a local time is ambiguous: "
            "append Z or +hh:mm/-hh:mm"
        )
    try:
        datetime.fromisoformat(value.upper())
    except ValueError as exc:
        return f"{where}.time {shown} is not a valid date-time: {exc}"
    if match[1] not in _OFFSET_MINUTES:
        return f"{where}.time {shown} has a UTC offset beyond +-18:00"
    return f"{where}.time {shown} is outside 1970-01-01T00:00:00Z to 9999-12-31 (UTC)"


def _valid_client_id(value: object) -> bool:
    if type(value) is not str or not 0 < len(value) <= MAX_CLIENT_ID_CHARS:
        return False
    if value.isascii():
        return "\x00" not in value
    # PostgreSQL text holds neither NUL nor unpaired surrogates (which JSON \ud800 escapes make).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _problem(where: str, member: str, item: dict[str, Any], expected: str) -> str:
    if member not in item:
        return f"{where}.{member} is missing (expected {expected})"
    return f"{where}.{member} must be {expected}, got {_show(item[member])}"


def _show(value: object, limit: int = 60) -> str:
    """The JSON type and, for scalars, a short JSON rendering (ASCII-only: safe for any column)."""
    kind = json_type(value)
    if kind == "null":
        return kind
    if kind in ("array", "object"):
        return f"an {kind}"
    return f"{kind} {json_excerpt(value, limit)}"


def json_excerpt(value: object, limit: int = 60) -> str:
    """Short JSON rendering; json.dumps escapes NUL, surrogates and non-ASCII characters."""
    shown = json.dumps(value)
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return shown
