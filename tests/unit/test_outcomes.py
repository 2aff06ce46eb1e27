"""Outcome mapping (ingest.outcomes) without a database: rows the merge did not store as new,
numbered across the whole batch, go back to the request and payload position they came from."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

from ingest.outcomes import (
    MAX_DETAIL_CHARS,
    QUARANTINE_COLUMNS,
    BatchTotals,
    Conflict,
    IngestOutcome,
    map_outcomes,
    recognise_repeats,
)
from ingest.requests import IngestRequest, QuarantineEntry
from ingest.store import ValidatedReading

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DEVICE, PATIENT = uuid.uuid4(), uuid.uuid4()
RECEIVED_AT = T0.timestamp()


def request(
    values: list[float], *, quarantine: tuple[QuarantineEntry, ...] = (), first_index: int = 0
) -> IngestRequest:
    readings = [
        ValidatedReading(T0 + timedelta(minutes=n), DEVICE, PATIENT, 1, value, received_at=T0)
        for n, value in enumerate(values)
    ]
    return IngestRequest(
        readings=readings,
        reading_indexes=[first_index + n for n in range(len(values))],
        quarantine=quarantine,
        raw_payload=b"{}",
        received_at=RECEIVED_AT,
        claimed_device=str(DEVICE),
        topic="rpm/v1/devices/x/readings",
    )


def test_a_batch_of_new_readings_is_all_stored() -> None:
    outcomes, rows = map_outcomes([request([1.0, 2.0]), request([3.0])], 7, [], source="http")
    assert outcomes == [IngestOutcome(7, 2, 0, (), 0), IngestOutcome(7, 1, 0, (), 0)]
    assert rows == []


def test_rows_not_stored_are_mapped_to_their_request_across_boundaries() -> None:
    """seq numbers the batch's rows request after request: 0-1 the first request, 2-4 the
    second (its payload positions 10-12), 5 the third."""
    requests = [request([1.0, 2.0]), request([3.0, 4.0, 5.0], first_index=10), request([6.0])]
    not_stored = [
        {"seq": 1, "stored_value": 2.0},  # first request, same value: a duplicate
        {"seq": 2, "stored_value": 3.0},  # second request's first reading: a duplicate
        {"seq": 4, "stored_value": 50.0},  # second request's third reading: a conflict
        {"seq": 5, "stored_value": 6.0},  # third request: a duplicate
    ]
    outcomes, rows = map_outcomes(requests, 9, not_stored, source="mqtt")
    conflict = Conflict(reading_index=12, stored_value=50.0, received_value=5.0)
    assert outcomes == [
        IngestOutcome(9, stored=1, duplicates=1, conflicts=(), quarantined=0),
        IngestOutcome(9, stored=1, duplicates=1, conflicts=(conflict,), quarantined=1),
        IngestOutcome(9, stored=0, duplicates=1, conflicts=(), quarantined=0),
    ]
    assert len(rows) == 1
    row = dict(zip(QUARANTINE_COLUMNS, rows[0].values, strict=True))
    assert row == {
        "received_at": datetime.fromtimestamp(RECEIVED_AT, UTC),
        "source": "mqtt",
        "reason": "conflict",
        "detail": conflict.detail,
        "payload_sha256": hashlib.sha256(b"{}").digest(),
        "reading_index": 12,
        "claimed_device": str(DEVICE),
        "topic": "rpm/v1/devices/x/readings",
        "batch_id": 9,
    }
    assert BatchTotals.of(outcomes) == BatchTotals(stored=2, duplicates=3, conflicts=1)


def test_validation_rejections_are_quarantined_after_conflicts_and_counted() -> None:
    rejected = QuarantineEntry("implausible", "heart rate 900 bpm", 1)
    requests = [request([1.0], quarantine=(rejected,)), request([], quarantine=(rejected,))]
    outcomes, rows = map_outcomes(requests, 3, [{"seq": 0, "stored_value": 2.0}], source="http")
    assert [(o.stored, o.quarantined) for o in outcomes] == [(0, 2), (0, 1)]
    assert [(row.entry.reason, row.entry.reading_index) for row in rows] == [
        ("conflict", 0),
        ("implausible", 1),
        ("implausible", 1),
    ]


def test_rows_already_quarantined_are_noted_as_repeats_and_one_copy_claims_the_insert() -> None:
    """The same payload twice in one batch: its rejected reading is inserted once (the first
    row claims it); the second request's is a repeat, as is one quarantined in an earlier
    batch (not among the inserted keys at all)."""
    rejected = QuarantineEntry("unknown_metric", "no such metric", 0)
    earlier = QuarantineEntry("implausible", "heart rate 900 bpm", 1)
    requests = [request([], quarantine=(rejected, earlier)), request([], quarantine=(rejected,))]
    outcomes, rows = map_outcomes(requests, 5, [], source="http")
    inserted = {rows[0].key}
    noted = recognise_repeats(outcomes, rows, inserted)
    assert [o.already_quarantined for o in noted] == [(earlier,), (rejected,)]


def test_a_long_detail_is_cut_to_the_bound() -> None:
    long = QuarantineEntry("invalid_payload", "x" * 5000, None)
    _, rows = map_outcomes([request([], quarantine=(long,))], 1, [], source="http")
    assert len(str(rows[0].values[3])) == MAX_DETAIL_CHARS
