"""Registering patients and devices, and assigning devices to patients over time."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import date, datetime

import psycopg

from schema.credentials import hash_device_token, mosquitto_password_hash
from schema.sql import queries


def _q(name: str) -> str:
    return queries("registry")[name]


class AssignmentOverlapError(ValueError):
    """The device is already assigned to a patient during (part of) the requested period."""


@dataclass(frozen=True)
class PatientIdentity:
    given_name: str | None = None
    family_name: str | None = None
    birth_date: date | None = None
    sex: str | None = None


@dataclass(frozen=True)
class RegisteredDevice:
    device_id: uuid.UUID
    token: str  # shown once; only its SHA-256 is stored


def register_patient(
    conn: psycopg.Connection,
    *,
    identity: PatientIdentity | None = None,
    identifiers: list[tuple[str, str]] | None = None,
) -> uuid.UUID:
    """Create a patient with optional identifying details and (system, value) identifiers."""
    with conn.transaction():
        row = conn.execute(_q("insert_patient")).fetchone()
        assert row is not None
        patient_id: uuid.UUID = row[0]
        if identity is not None:
            conn.execute(
                _q("insert_patient_identity"),
                {
                    "patient_id": patient_id,
                    "given_name": identity.given_name,
                    "family_name": identity.family_name,
                    "birth_date": identity.birth_date,
                    "sex": identity.sex,
                },
            )
        for system, value in identifiers or []:
            conn.execute(
                _q("insert_patient_identifier"),
                {"patient_id": patient_id, "system": system, "value": value},
            )
    return patient_id


def register_device(
    conn: psycopg.Connection, *, kind: str, manufacturer: str, model: str, serial_number: str
) -> RegisteredDevice:
    """Create a device and issue its bearer token (returned once, stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    row = conn.execute(
        _q("insert_device"),
        {
            "kind": kind,
            "manufacturer": manufacturer,
            "model": model,
            "serial_number": serial_number,
            "credential_sha256": hash_device_token(token),
            "broker_password_hash": mosquitto_password_hash(token),
        },
    ).fetchone()
    assert row is not None
    return RegisteredDevice(device_id=row[0], token=token)


def assign_device(
    conn: psycopg.Connection,
    *,
    device_id: uuid.UUID,
    patient_id: uuid.UUID,
    valid_from: datetime,
    valid_until: datetime | None = None,
) -> int:
    """Assign a device to a patient for [valid_from, valid_until); open-ended when no end."""
    try:
        with conn.transaction():
            row = conn.execute(
                _q("insert_assignment"),
                {
                    "device_id": device_id,
                    "patient_id": patient_id,
                    "valid_from": valid_from,
                    "valid_until": valid_until,
                },
            ).fetchone()
    except psycopg.errors.ExclusionViolation as exc:
        raise AssignmentOverlapError(
            f"device {device_id} is already assigned during part of "
            f"[{valid_from.isoformat()}, {valid_until.isoformat() if valid_until else 'open'})"
        ) from exc
    assert row is not None
    return int(row[0])


def end_assignment(conn: psycopg.Connection, *, device_id: uuid.UUID, ended_at: datetime) -> bool:
    """Close the device's open-ended assignment at ``ended_at``; False when it had none."""
    row = conn.execute(
        _q("end_open_assignment"), {"device_id": device_id, "ended_at": ended_at}
    ).fetchone()
    return row is not None


def patient_for_device_at(
    conn: psycopg.Connection, *, device_id: uuid.UUID, at: datetime
) -> uuid.UUID | None:
    """The patient the device was assigned to at ``at`` (None when unassigned then)."""
    row = conn.execute(_q("patient_for_device_at"), {"device_id": device_id, "at": at}).fetchone()
    return None if row is None else row[0]


def broker_device_accounts(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(username, Mosquitto password hash) of every device allowed on the broker now."""
    return [(row[0], row[1]) for row in conn.execute(_q("broker_device_accounts")).fetchall()]
