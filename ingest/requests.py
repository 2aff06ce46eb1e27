"""What callers hand the group committer: one validated HTTP request or MQTT message."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ingest.store import ReadingColumns, Source, ValidatedReading


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A received reading (or whole payload) that will not be stored, with why."""

    reason: str
    detail: str
    reading_index: int | None


@dataclass(frozen=True)
class IngestRequest:
    """One HTTP request or MQTT message, validated.

    ``readings`` may be given as columns (the ingest path) or as ValidatedReading objects;
    the committer only uses ``columns``.
    """

    readings: ReadingColumns | Sequence[ValidatedReading]
    # reading_indexes[i]: position in the payload of reading i (for per-reading answers)
    reading_indexes: Sequence[int]
    quarantine: Sequence[QuarantineEntry]
    raw_payload: bytes
    received_at: float  # time.time() when it arrived; quarantine rows record it
    claimed_device: str | None = None
    topic: str | None = None
    # The transport it came by, for the metrics (the committer's own source when None).
    source: Source | None = None
    columns: ReadingColumns = field(init=False, repr=False)

    def __post_init__(self) -> None:
        readings = self.readings
        columns = (
            readings
            if isinstance(readings, ReadingColumns)
            else ReadingColumns.from_readings(readings)
        )
        object.__setattr__(self, "columns", columns)  # derived once; the dataclass is frozen

    @cached_property
    def payload_sha256(self) -> bytes:
        """The raw payload's key in rpm.ingest_payloads (only worked out when quarantining)."""
        return hashlib.sha256(self.raw_payload).digest()
