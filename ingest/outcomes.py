"""What became of each request of a committed batch, and the quarantine rows that say why.

The batch's rows are numbered (``seq``) request after request; the rows the database did not
store as new come back by ``seq`` with the value already stored. Each is mapped back to its
request: the same value is a duplicate (a retry or redelivery), a different one a conflict,
which is quarantined -- never overwriting or dropping either value.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import numpy as np

from ingest.requests import IngestRequest, QuarantineEntry
from ingest.store import Source

# rpm.ingest_quarantine's columns, in the order of the rows quarantine_row builds.
QUARANTINE_COLUMNS = (
    "received_at",
    "source",
    "reason",
    "detail",
    "raw_payload",
    "reading_index",
    "claimed_device",
    "topic",
    "batch_id",
)

QuarantineRow = tuple[object, ...]


@dataclass(frozen=True)
class Conflict:
    reading_index: int
    stored_value: float
    received_value: float

    @property
    def detail(self) -> str:
        return (
            f"a different value ({self.stored_value:g}) is already stored for this device, "
            f"metric and time; received {self.received_value:g}"
        )


@dataclass(frozen=True)
class IngestOutcome:
    """What became of one request: every reading is stored, a duplicate, or quarantined."""

    batch_id: int
    stored: int
    duplicates: int
    conflicts: tuple[Conflict, ...]
    quarantined: int  # validation rejections, conflicts and refused readings
    # Readings the database refused although they passed validation (quarantined).
    refused: tuple[QuarantineEntry, ...] = ()


@dataclass(frozen=True)
class BatchTotals:
    """The batch's counts, as rpm.ingest_batches records them."""

    stored: int
    duplicates: int
    conflicts: int

    @classmethod
    def of(cls, outcomes: Sequence[IngestOutcome]) -> BatchTotals:
        return cls(
            stored=sum(o.stored for o in outcomes),
            duplicates=sum(o.duplicates for o in outcomes),
            conflicts=sum(len(o.conflicts) for o in outcomes),
        )


def map_outcomes(
    requests: Sequence[IngestRequest],
    batch_id: int,
    not_stored: Sequence[asyncpg.Record],
    *,
    source: Source,
) -> tuple[list[IngestOutcome], list[QuarantineRow]]:
    """Each request's outcome, and the quarantine rows of the whole batch.

    ``not_stored``: the rows not stored as new, each with ``seq`` (row number in the batch)
    and ``stored_value``; empty when every reading was new.
    """
    duplicates = [0] * len(requests)
    conflicts: list[list[Conflict]] = [[] for _ in requests]
    quarantine_rows: list[QuarantineRow] = []
    # seq (row number in the batch) -> (request number, row number in the request)
    starts = np.cumsum([0] + [len(r.columns) for r in requests]).tolist()
    for record in not_stored:
        seq = record["seq"]
        stored_value = record["stored_value"]
        request_number = bisect.bisect_right(starts, seq) - 1
        reading_number = seq - starts[request_number]
        request = requests[request_number]
        value = float(request.columns.value[reading_number])
        if stored_value == value:
            duplicates[request_number] += 1
            continue
        conflict = Conflict(request.reading_indexes[reading_number], stored_value, value)
        conflicts[request_number].append(conflict)
        entry = QuarantineEntry("conflict", conflict.detail, conflict.reading_index)
        quarantine_rows.append(quarantine_row(request, batch_id, entry, source=source))
    outcomes = []
    for n, request in enumerate(requests):
        quarantine_rows.extend(
            quarantine_row(request, batch_id, entry, source=source) for entry in request.quarantine
        )
        outcomes.append(
            IngestOutcome(
                batch_id=batch_id,
                stored=len(request.columns) - duplicates[n] - len(conflicts[n]),
                duplicates=duplicates[n],
                conflicts=tuple(conflicts[n]),
                quarantined=len(request.quarantine) + len(conflicts[n]),
            )
        )
    return outcomes, quarantine_rows


def quarantine_row(
    request: IngestRequest, batch_id: int, entry: QuarantineEntry, *, source: Source
) -> QuarantineRow:
    """One rpm.ingest_quarantine row, in ``QUARANTINE_COLUMNS`` order."""
    return (
        datetime.fromtimestamp(request.received_at, UTC),
        source,
        entry.reason,
        entry.detail,
        request.raw_payload,
        entry.reading_index,
        request.claimed_device,
        request.topic,
        batch_id,
    )
