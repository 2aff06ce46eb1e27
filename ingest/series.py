"""The series an ingest batch touched, reduced with numpy for the alert outbox and evaluator.

For every (patient, metric) in a batch: the oldest and newest measurement time and the lowest
and highest value. The group committer writes them to ``rpm.alert_outbox`` in the batch's own
transaction, so this runs on the ingest path for every batch: grouping sorts three integer keys
(the patient uuid as two 64-bit halves, and the metric) instead of sorting 18-byte records,
which cost the ingesting process more CPU than decoding the readings did.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from alerting import TouchedRange, merge_ranges
from ingest.store import ReadingColumns, ValidatedReading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SeriesRanges:
    """One entry per (patient, metric) series, as columns."""

    patient: npt.NDArray[np.uint8]  # (k, 16) uuid bytes
    metric_id: npt.NDArray[np.int16]
    start_us: npt.NDArray[np.int64]  # oldest measured_at, microseconds since 1970 (UTC)
    end_us: npt.NDArray[np.int64]  # newest measured_at
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.metric_id)

    def outbox_arguments(
        self,
    ) -> tuple[list[str], list[int], list[int], list[int], list[float], list[float]]:
        """The six arrays of an ``rpm.alert_outbox`` row, as asyncpg takes them cheaply: uuids
        as hex text (parsed in C), times as integers."""
        hexes = self.patient.tobytes().hex()
        return (
            [hexes[i : i + 32] for i in range(0, len(hexes), 32)],
            self.metric_id.tolist(),
            self.start_us.tolist(),
            self.end_us.tolist(),
            self.low.tolist(),
            self.high.tolist(),
        )


def series_ranges(columns: ReadingColumns) -> SeriesRanges:
    """The series ``columns`` touch, each with its time and value extremes."""
    if not len(columns):
        return SeriesRanges(
            np.empty((0, 16), dtype=np.uint8),
            np.empty(0, dtype=np.int16),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64),
            np.empty(0, dtype=np.float64),
        )
    halves = np.ascontiguousarray(columns.patient).view(np.uint64)  # (n, 2)
    # lexsort: the last key is the primary one.
    order = np.lexsort((columns.metric_id, halves[:, 1], halves[:, 0]))
    high_half, low_half = halves[order, 0], halves[order, 1]
    metric = columns.metric_id[order]
    first = np.ones(len(order), dtype=np.bool_)
    first[1:] = (
        (high_half[1:] != high_half[:-1])
        | (low_half[1:] != low_half[:-1])
        | (metric[1:] != metric[:-1])
    )
    starts = np.flatnonzero(first)
    measured = columns.measured_us[order]
    value = columns.value[order]
    return SeriesRanges(
        patient=np.ascontiguousarray(columns.patient[order[starts]]),
        metric_id=metric[starts],
        start_us=np.minimum.reduceat(measured, starts),
        end_us=np.maximum.reduceat(measured, starts),
        low=np.minimum.reduceat(value, starts),
        high=np.maximum.reduceat(value, starts),
    )


def touched_ranges(
    batches: Iterable[ReadingColumns | Iterable[ValidatedReading]],
) -> list[TouchedRange]:
    """One range per (patient, metric) over all readings of ``batches``.

    Batches of columns (the ingest path) are reduced with numpy: converting them back to one
    object per reading cost the ingest process more CPU than decoding and validating them.
    """
    # key -> [start, end, low, high]
    ranges: dict[tuple[uuid.UUID, int], list[Any]] = {}
    from_columns: list[TouchedRange] = []
    for readings in batches:
        if isinstance(readings, ReadingColumns):
            from_columns.extend(_column_ranges(readings))
            continue
        for r in readings:
            seen = ranges.get((r.patient_id, r.metric_id))
            if seen is None:
                ranges[(r.patient_id, r.metric_id)] = [
                    r.measured_at,
                    r.measured_at,
                    r.value,
                    r.value,
                ]
                continue
            if r.measured_at < seen[0]:
                seen[0] = r.measured_at
            elif r.measured_at > seen[1]:
                seen[1] = r.measured_at
            if r.value < seen[2]:
                seen[2] = r.value
            elif r.value > seen[3]:
                seen[3] = r.value
    objects = [TouchedRange(p, m, *bounds) for (p, m), bounds in ranges.items()]
    return merge_ranges([*objects, *from_columns]) if from_columns else objects


def _column_ranges(columns: ReadingColumns) -> list[TouchedRange]:
    ranges = series_ranges(columns)
    return [
        TouchedRange(
            uuid.UUID(bytes=bytes(patient)),
            metric_id,
            _EPOCH + timedelta(microseconds=start),
            _EPOCH + timedelta(microseconds=end),
            low,
            high,
        )
        for patient, metric_id, start, end, low, high in zip(
            ranges.patient,
            ranges.metric_id.tolist(),
            ranges.start_us.tolist(),
            ranges.end_us.tolist(),
            ranges.low.tolist(),
            ranges.high.tolist(),
            strict=True,
        )
    ]
