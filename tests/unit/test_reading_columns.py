"""ReadingColumns: validated readings as numpy columns, and back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from ingest.copy_binary import COPY_HEADER, COPY_TRAILER
from ingest.store import ReadingColumns, ValidatedReading

AT = datetime(2026, 11, 24, 9, 0, 0, 250_001, tzinfo=UTC)
DEVICE = uuid.UUID("0b6f2c1e-6a3d-4f5e-9b1a-2c3d4e5f6a7b")
PATIENT = uuid.UUID("a4d1f0a2-3c5e-4b7d-8e9f-0a1b2c3d4e5f")


def readings() -> list[ValidatedReading]:
    return [
        ValidatedReading(AT, DEVICE, PATIENT, 1, 61.5, AT + timedelta(seconds=1)),
        ValidatedReading(
            datetime(1999, 1, 1, tzinfo=UTC), uuid.uuid4(), uuid.uuid4(), 4, 97.0, AT, -330, "r-2"
        ),
        ValidatedReading(AT, DEVICE, PATIENT, 5, 120.0, AT, 0, "ünïcode:systolic"),
    ]


def test_rows_survive_the_round_trip_through_columns() -> None:
    sent = readings()
    columns = ReadingColumns.from_readings(sent)
    assert len(columns) == 3
    assert columns.to_readings() == sent


def test_without_client_ids_nothing_is_kept_per_reading() -> None:
    columns = ReadingColumns.from_readings([r._replace(client_reading_id=None) for r in readings()])
    assert columns.client_ids is None
    assert [r.client_reading_id for r in columns.to_readings()] == [None, None, None]


def test_concat_and_row_ranges_keep_every_row_in_order() -> None:
    sent = readings()
    first = ReadingColumns.from_readings([sent[0]])  # no client ids in this part
    rest = ReadingColumns.from_readings(sent[1:])
    joined = ReadingColumns.concat([first, rest])
    assert joined.to_readings() == sent
    assert joined.rows(1, 3).to_readings() == sent[1:]
    assert ReadingColumns.concat([]).to_readings() == []


def test_copy_streams_are_complete_binary_copy_streams() -> None:
    columns = ReadingColumns.from_readings(readings())
    for stream in (columns.copy_stream(batch_id=42), columns.stage_stream()):
        assert stream.startswith(COPY_HEADER)
        assert stream.endswith(COPY_TRAILER)
    # The batch id is written into every row (int8, big-endian, after its length 8).
    batch_field = (8).to_bytes(4, "big") + (42).to_bytes(8, "big")
    assert columns.copy_stream(batch_id=42).count(batch_field) == 3
    assert ReadingColumns.empty().copy_stream(batch_id=1) == COPY_HEADER + COPY_TRAILER
