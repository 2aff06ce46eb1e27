"""What became of each request of a committed batch, and the quarantine rows that say why.

The batch's rows are numbered (``seq``) request after request; the rows the database did not
store as new come back by ``seq`` with the value already stored. Each is mapped back to its
request: the same value is a duplicate (a retry or redelivery), a different one a conflict,
which is quarantined -- never overwriting or dropping either value.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg
import numpy as np

from ingest.requests import IngestRequest, QuarantineEntry
from ingest.store import Source

# rpm.ingest_quarantine's columns, in the order of the rows quarantine_row builds (and of
# the insert_quarantine statement's arrays).
QUARANTINE_COLUMNS = (
    "received_at",
    "source",
    "reason",
    "detail",
    "payload_sha256",
    "reading_index",
    "claimed_device",
    "topic",
    "batch_id",
)
# A quarantine row's detail is for a person and bounded (the table's CHECK): a rejected
# reading costs a row of bounded size, never a copy of what the sender chose to send.
MAX_DETAIL_CHARS = 1000
# What makes a quarantine row unique (ingest_quarantine_once): a retried payload's rejected
# readings have the same key and are recognised, not quarantined again.
QuarantineKey = tuple[bytes, int | None, str]


@dataclass(frozen=True)
class QuarantineRow:
    """One rpm.ingest_quarantine row (``values`` in ``QUARANTINE_COLUMNS`` order), with the
    request of the batch it belongs to."""

    request_number: int
    entry: QuarantineEntry
    payload_sha256: bytes
    values: tuple[object, ...]

    @property
    def key(self) -> QuarantineKey:
        return (self.payload_sha256, self.entry.reading_index, self.entry.reason)


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
    # Rejected readings already in the quarantine from an earlier copy of the same payload (a
    # retry or redelivery): recognised, not quarantined again.
    already_quarantined: tuple[QuarantineEntry, ...] = ()


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
        quarantine_rows.append(_row(request_number, request, batch_id, entry, source=source))
    outcomes = []
    for n, request in enumerate(requests):
        quarantine_rows.extend(
            _row(n, request, batch_id, entry, source=source) for entry in request.quarantine
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


def recognise_repeats(
    outcomes: Sequence[IngestOutcome],
    rows: Sequence[QuarantineRow],
    inserted: Collection[QuarantineKey],
) -> list[IngestOutcome]:
    """``outcomes`` with the rows that were not ``inserted`` (already quarantined) noted.

    The same key twice in one batch (one payload sent twice at once) is inserted once: the
    first row with it claims the insertion, the later ones are repeats.
    """
    unclaimed = set(inserted)
    repeats: list[list[QuarantineEntry]] = [[] for _ in outcomes]
    for row in rows:
        if row.key in unclaimed:
            unclaimed.discard(row.key)
        else:
            repeats[row.request_number].append(row.entry)
    return [
        replace(outcome, already_quarantined=tuple(repeated)) if repeated else outcome
        for outcome, repeated in zip(outcomes, repeats, strict=True)
    ]


def _row(
    request_number: int,
    request: IngestRequest,
    batch_id: int,
    entry: QuarantineEntry,
    *,
    source: Source,
) -> QuarantineRow:
    values = quarantine_row(request, batch_id, entry, source=source)
    return QuarantineRow(request_number, entry, request.payload_sha256, values)


def quarantine_row(
    request: IngestRequest, batch_id: int, entry: QuarantineEntry, *, source: Source
) -> tuple[object, ...]:
    """One rpm.ingest_quarantine row, in ``QUARANTINE_COLUMNS`` order."""
    return (
        datetime.fromtimestamp(request.received_at, UTC),
        source,
        entry.reason,
        entry.detail[:MAX_DETAIL_CHARS],
        request.payload_sha256,
        entry.reading_index,
        request.claimed_device,
        request.topic,
        batch_id,
    )
