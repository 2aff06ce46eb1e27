"""Legal holds: patients whose raw readings retention must never destroy."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from retention.errors import RetentionError
from retention.targets import Q


@dataclass(frozen=True)
class Hold:
    hold_id: int
    patient_id: uuid.UUID
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str | None
    released_at: datetime | None


def place_hold(conn: psycopg.Connection, patient_id: uuid.UUID, *, reason: str, by: str) -> int:
    """Hold a patient's raw readings; returns the hold id. Waits for a drop in progress."""
    row = conn.execute(
        Q["place_hold"], {"patient_id": patient_id, "reason": reason, "placed_by": by}
    ).fetchone()
    assert row is not None
    return int(row[0])


def release_hold(conn: psycopg.Connection, hold_id: int, *, reason: str, by: str) -> None:
    """Release a hold (the row stays as the record). Held rows already set aside stay too."""
    row = conn.execute(
        Q["release_hold"], {"hold_id": hold_id, "reason": reason, "released_by": by}
    ).fetchone()
    if row is None:
        raise RetentionError(f"no active legal hold {hold_id}")


def list_holds(conn: psycopg.Connection) -> list[Hold]:
    return [Hold(*row) for row in conn.execute(Q["list_holds"]).fetchall()]
