"""RFC 3339 date-times of a whole payload parsed at once with numpy.

Devices send a payload's times in one shape (``2026-11-24T10:00:00Z``, ``...00.123+01:00``).
Parsing them one by one (a regular expression, then ``datetime.fromisoformat``) cost about
1.5 us per reading, more than decoding and validating the rest of it. Here the strings of one
length become a matrix of code points, and every field is read, checked and combined column by
column.

Only the common shapes are handled: seconds with no fraction or with 3 or 6 fraction digits,
and ``Z``/``z`` or a ``+hh:mm``/``-hh:mm`` offset, all strings of one length. Anything else,
and any string this parser doubts, returns None, and the caller parses every time one by one:
the answer for a string accepted here is the per-reading parser's answer (a test compares them).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Lengths of the handled shapes: 19 characters of date and time, a fraction (none, ".fff" or
# ".ffffff"), then "Z" or "+hh:mm".
_FRACTION_DIGITS_BY_LENGTH = {
    20: 0,
    24: 3,
    27: 6,
    25: 0,
    29: 3,
    32: 6,
}
_US_PER_DAY = 86_400_000_000
_DIGIT_POSITIONS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)


def parse_rfc3339_column(
    times: list[str], *, max_epoch_us: int, max_offset_minutes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int16], npt.NDArray[np.bool_]] | None:
    """(microseconds since 1970 UTC, UTC offset in minutes, offset unknown) per string, or
    None unless every string is one of the handled shapes, a valid date-time with an offset
    within ``max_offset_minutes`` and between 1970 and ``max_epoch_us``."""
    lengths = set(map(len, times))
    if len(lengths) != 1:
        return None
    (length,) = lengths
    fraction_digits = _FRACTION_DIGITS_BY_LENGTH.get(length)
    if fraction_digits is None:
        return None
    try:
        chars = np.array(times, dtype=f"<U{length}").view(np.uint32).reshape(-1, length)
    except (ValueError, UnicodeError):
        return None
    if not _layout_ok(chars, length, fraction_digits):
        return None
    digits = chars.astype(np.int64) - ord("0")

    def number(start: int, width: int) -> npt.NDArray[np.int64]:
        value = digits[:, start]
        for column in range(start + 1, start + width):
            value = value * 10 + digits[:, column]
        return value

    year, month, day = number(0, 4), number(5, 2), number(8, 2)
    hour, minute, second = number(11, 2), number(14, 2), number(17, 2)
    fraction_us = (
        number(20, fraction_digits) * 10 ** (6 - fraction_digits)
        if fraction_digits
        else np.zeros(len(times), dtype=np.int64)
    )
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    month_days = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[
        np.clip(month - 1, 0, 11)
    ] + ((month == 2) & leap)
    if not (
        month_ok.all()
        and ((day >= 1) & (day <= month_days)).all()
        and (hour <= 23).all()
        and (minute <= 59).all()
        and (second <= 59).all()
    ):
        return None

    offset_minutes, offset_unknown = _offsets(chars, digits, length)
    if offset_minutes is None or offset_unknown is None:
        return None
    if (np.abs(offset_minutes) > max_offset_minutes).any():
        return None
    local_us = (
        _days_from_civil(year, month, day) * _US_PER_DAY
        + ((hour * 60 + minute) * 60 + second) * 1_000_000
        + fraction_us
    )
    time_us = local_us - offset_minutes * 60_000_000
    if not ((time_us >= 0) & (time_us <= max_epoch_us)).all():
        return None
    return time_us, offset_minutes.astype(np.int16), offset_unknown


def _layout_ok(chars: npt.NDArray[np.uint32], length: int, fraction_digits: int) -> bool:
    """Digits and separators where the shape puts them (ASCII digits only)."""
    digit_columns = list(_DIGIT_POSITIONS)
    if fraction_digits:
        digit_columns += range(20, 20 + fraction_digits)
    zone = 19 + (fraction_digits + 1 if fraction_digits else 0)
    if length - zone == 6:
        digit_columns += [zone + 1, zone + 2, zone + 4, zone + 5]
    picked = chars[:, digit_columns]
    if not ((picked >= ord("0")) & (picked <= ord("9"))).all():
        return False
    separators = {4: "-", 7: "-", 13: ":", 16: ":"}
    if fraction_digits:
        separators[19] = "."
    if length - zone == 6:
        separators[zone + 3] = ":"
    for column, char in separators.items():
        if not (chars[:, column] == ord(char)).all():
            return False
    return bool(np.isin(chars[:, 10], [ord("T"), ord("t"), ord(" ")]).all())


def _offsets(
    chars: npt.NDArray[np.uint32],
    digits: npt.NDArray[np.int64],
    length: int,
) -> tuple[npt.NDArray[np.int64] | None, npt.NDArray[np.bool_] | None]:
    """UTC offset minutes, and whether the offset is unknown (RFC 3339's ``-00:00``)."""
    count = len(chars)
    if length in (20, 24, 27):  # "Z"
        if not np.isin(chars[:, -1], [ord("Z"), ord("z")]).all():
            return None, None
        return np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.bool_)
    sign_column = chars[:, length - 6]
    plus, minus = sign_column == ord("+"), sign_column == ord("-")
    if not (plus | minus).all():
        return None, None
    hours = digits[:, length - 5] * 10 + digits[:, length - 4]
    minutes = digits[:, length - 2] * 10 + digits[:, length - 1]
    if (minutes > 59).any():
        return None, None
    magnitude = hours * 60 + minutes
    unknown = minus & (magnitude == 0)
    return np.where(minus, -magnitude, magnitude), unknown


def _days_from_civil(
    year: npt.NDArray[np.int64], month: npt.NDArray[np.int64], day: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's days_from_civil)."""
    year = year - (month <= 2)
    era = np.floor_divide(year, 400)
    year_of_era = year - era * 400
    day_of_year = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days: npt.NDArray[np.int64] = era * 146_097 + day_of_era - 719_468
    return days
