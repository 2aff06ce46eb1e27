"""Readings belong to the patient the device was assigned to at the reading's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ingest.store import ValidatedReading, store_readings
from schema.registry import (
    AssignmentOverlapError,
    assign_device,
    end_assignment,
    patient_for_device_at,
    register_device,
    register_patient,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
HANDOVER = T0 + timedelta(days=10)


def test_attribution_follows_the_assignment_valid_at_the_reading_time(
    conn: psycopg.Connection,
) -> None:
    first, second = register_patient(conn), register_patient(conn)
    device = register_device(
        conn, kind="pulse_oximeter", manufacturer="Acme", model="OX-1", serial_number="SN-1"
    ).device_id
    assign_device(conn, device_id=device, patient_id=first, valid_from=T0)
    assert end_assignment(conn, device_id=device, ended_at=HANDOVER)
    assign_device(conn, device_id=device, patient_id=second, valid_from=HANDOVER)

    assert patient_for_device_at(conn, device_id=device, at=T0 - timedelta(seconds=1)) is None
    assert patient_for_device_at(conn, device_id=device, at=T0) == first
    just_before = HANDOVER - timedelta(microseconds=1)
    assert patient_for_device_at(conn, device_id=device, at=just_before) == first
    # The period is half-open: the handover instant already belongs to the new patient.
    assert patient_for_device_at(conn, device_id=device, at=HANDOVER) == second
    # A late reading, arriving after the handover, still goes to the patient of its own time.
    assert patient_for_device_at(conn, device_id=device, at=HANDOVER - timedelta(days=1)) == first


def test_overlapping_assignment_is_refused(conn: psycopg.Connection) -> None:
    first, second = register_patient(conn), register_patient(conn)
    device = register_device(
        conn, kind="scale", manufacturer="Acme", model="SC-1", serial_number="SN-2"
    ).device_id
    assign_device(conn, device_id=device, patient_id=first, valid_from=T0, valid_until=HANDOVER)
    with pytest.raises(AssignmentOverlapError, match=str(device)):
        assign_device(
            conn, device_id=device, patient_id=second, valid_from=HANDOVER - timedelta(hours=1)
        )
    # Adjacent periods do not overlap.
    assign_device(conn, device_id=device, patient_id=second, valid_from=HANDOVER)


def test_stored_readings_carry_the_attributed_patient(conn: psycopg.Connection) -> None:
    first, second = register_patient(conn), register_patient(conn)
    device = register_device(
        conn, kind="pulse_oximeter", manufacturer="Acme", model="OX-1", serial_number="SN-3"
    ).device_id
    assign_device(conn, device_id=device, patient_id=first, valid_from=T0, valid_until=HANDOVER)
    assign_device(conn, device_id=device, patient_id=second, valid_from=HANDOVER)
    times = [T0 + timedelta(days=d) for d in (1, 9, 11, 20)]
    readings = []
    for at in times:
        patient = patient_for_device_at(conn, device_id=device, at=at)
        assert patient is not None
        readings.append(
            ValidatedReading(
                at, device, patient, 4, 97.0, received_at=HANDOVER + timedelta(days=30)
            )
        )
    store_readings(conn, readings, source="import")
    rows = conn.execute(
        "SELECT measured_at, patient_id FROM rpm.readings WHERE device_id = %s ORDER BY 1",
        (device,),
    ).fetchall()
    assert rows == [(times[0], first), (times[1], first), (times[2], second), (times[3], second)]
