"""Rollup levels and the read-side resolution policy, shared by the API and the refresher.

The rollups themselves (relations, views, policies) are defined by the migrations; keeping
them materialized is ``jobs.rollups``. This module holds only what both sides must agree on:
the levels, their widths and how a requested number of points picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Resolution = Literal["raw", "1m", "1h", "1d"]
RollupLevel = Literal["1m", "1h", "1d"]
# Coarsest first: the order choose_resolution tries them in.
ROLLUP_WIDTHS: Mapping[RollupLevel, timedelta] = MappingProxyType(
    {"1d": timedelta(days=1), "1h": timedelta(hours=1), "1m": timedelta(minutes=1)}
)
FINER: Mapping[RollupLevel, str] = MappingProxyType({"1m": "raw", "1h": "1m", "1d": "1h"})
LEVELS: tuple[RollupLevel, ...] = ("1m", "1h", "1d")  # the order they are built in


def bucket_count(start: datetime, end: datetime, width: timedelta) -> int:
    """How many UTC-aligned buckets of ``width`` overlap [start, end) (0 when end <= start)."""
    if end <= start:
        return 0
    first = (start - EPOCH) // width
    last = (end - EPOCH - timedelta(microseconds=1)) // width
    return last - first + 1


def choose_resolution(start: datetime, end: datetime, points: int) -> Resolution:
    """The ``auto`` resolution: the coarsest rollup giving at least ``points`` buckets.

    ``points`` is how many points the caller wants to draw over [start, end). When not even
    1-minute buckets give that many (a short range), the raw readings are the finest answer.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end <= start:
        raise ValueError("end must be after start")
    if points < 1:
        raise ValueError("points must be at least 1")
    for level, width in ROLLUP_WIDTHS.items():
        if bucket_count(start, end, width) >= points:
            return level
    return "raw"


def floor_to_level(at: datetime, level: RollupLevel) -> datetime:
    """time_bucket(level, at): UTC-aligned, as TimescaleDB aligns hours and days."""
    width = ROLLUP_WIDTHS[level]
    return EPOCH + ((at - EPOCH) // width) * width
