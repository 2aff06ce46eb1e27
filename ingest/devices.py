"""What validation needs to know about a device: its status and assignment periods."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Assignment:
    """The device belonged to ``patient_id`` during [valid_from, valid_until)."""

    valid_from: datetime
    valid_until: datetime | None  # None: still assigned
    patient_id: uuid.UUID


@dataclass(frozen=True)
class DeviceContext:
    device_id: uuid.UUID
    status: str  # 'active', 'suspended' or 'retired'
    assignments: tuple[Assignment, ...]  # non-overlapping (the database enforces it)
