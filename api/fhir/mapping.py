"""One imported Observation to the device-ingest readings it stands for (pure, no I/O).

Only what FHIR adds is checked here (resource shape, codings, references); everything device
ingest checks — known metric, convertible unit, finite value in range, time with an offset, not
in the future, device active and assigned — is left to ingest, so an imported reading passes
exactly the same validation as one a device sent. Values and times are passed through as
received for that reason: ingest refuses ``"97"`` or a time without offset with its own reason.

Mapping:
- ``Observation.code``: the LOINC coding (``http://loinc.org``) is the metric; the panel 85354-9
  is read from its components 8480-6 and 8462-4, stored as the two halves ingest stores a panel
  as (client ids ``<id>:systolic`` / ``<id>:diastolic``).
- ``valueQuantity``: ``value`` and the UCUM ``code`` (``system`` UCUM when given); ingest converts
  to the canonical unit. The human-readable ``unit`` is not used: it is free text.
- ``effectiveDateTime`` (or ``effectiveInstant``): the measurement time.
- ``identifier[0].value``: the client reading id, the idempotency key (dedup itself is by the
  natural key device + metric + measurement time, as for devices).
- ``device``: ``Device/<uuid>``, required. Without it the entry is refused (``missing_device``):
  the patient is never used to guess which device measured.
- ``subject``: ``identifier`` (system + value, matched in rpm.patient_identifiers) or
  ``Patient/<uuid>`` (this server's own id).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.fhir.resources import BP_DIASTOLIC, BP_PANEL, BP_SYSTOLIC, LOINC, UCUM

_REFERENCE = re.compile(r"(Device|Patient)/([0-9a-fA-F-]{36})", re.ASCII)
_ACCEPTED_STATUS = frozenset({"final", "amended", "corrected"})
_PARTS = {BP_SYSTOLIC: "systolic", BP_DIASTOLIC: "diastolic"}


class EntryRefused(Exception):
    """An entry refused before ingest, with the quarantine reason and the HTTP status."""

    def __init__(self, reason: str, detail: str, status: int = 422) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class PatientIdentifier:
    system: str
    value: str


@dataclass(frozen=True)
class MappedObservation:
    device_id: uuid.UUID
    patient: PatientIdentifier | uuid.UUID
    effective: datetime | None  # None when ingest will refuse the time anyway
    effective_text: Any
    client_id: str | None
    readings: list[dict[str, Any]]


def _invalid(detail: str) -> EntryRefused:
    return EntryRefused("invalid_observation", detail, 400)


def _reference(value: Any, kind: str) -> uuid.UUID | None:
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    match = _REFERENCE.fullmatch(value["reference"])
    if match is None or match[1] != kind:
        raise _invalid(
            f"{kind.lower()}.reference must be {kind}/<uuid>, got {value['reference']!r}"
        )
    try:
        return uuid.UUID(match[2])
    except ValueError:
        raise _invalid(f"{value['reference']!r} is not a {kind} id") from None


def _loinc(concept: Any, where: str) -> str:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else []:
        if (
            isinstance(coding, dict)
            and coding.get("system") == LOINC
            and isinstance(coding.get("code"), str)
        ):
            return str(coding["code"])
    raise _invalid(f"{where} has no LOINC coding (system {LOINC})")


def _quantity(quantity: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(quantity, dict):
        raise _invalid(f"{where}.valueQuantity is required")
    system = quantity.get("system")
    if system is not None and system != UCUM:
        raise _invalid(f"{where}.valueQuantity.system must be {UCUM}, got {system!r}")
    if "code" not in quantity:
        raise _invalid(f"{where}.valueQuantity.code (the UCUM unit) is required")
    # Passed through as received: ingest checks the number and the unit.
    return quantity.get("value"), quantity["code"]


def _patient(subject: Any) -> PatientIdentifier | uuid.UUID:
    if isinstance(subject, dict):
        ident = subject.get("identifier")
        if isinstance(ident, dict):
            system, value = ident.get("system"), ident.get("value")
            if isinstance(system, str) and isinstance(value, str) and system and value:
                return PatientIdentifier(system, value)
            raise _invalid("subject.identifier needs both system and value")
        own = _reference(subject, "Patient")
        if own is not None:
            return own
    raise _invalid("subject must name the patient by identifier (system and value) or Patient/<id>")


def _effective(observation: dict[str, Any]) -> tuple[Any, datetime | None]:
    text = observation.get("effectiveDateTime", observation.get("effectiveInstant"))
    if text is None:
        raise _invalid("effectiveDateTime is required")
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        moment = None
    return text, moment if moment is not None and moment.tzinfo is not None else None


def map_observation(resource: Any) -> MappedObservation:
    """The device-ingest readings of one Observation, or :class:`EntryRefused`."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        raise _invalid(f"only Observation resources are imported, got {kind!r}")
    status = resource.get("status")
    if status not in _ACCEPTED_STATUS:
        raise _invalid(f"status must be one of {sorted(_ACCEPTED_STATUS)}, got {status!r}")
    code = _loinc(resource.get("code"), "code")
    if "device" not in resource:
        raise EntryRefused(
            "missing_device",
            "Observation.device (Device/<uuid>) is required: a reading is attributed through "
            "its device's assignment, and the device is never guessed from the patient",
        )
    device_id = _reference(resource["device"], "Device")
    if device_id is None:
        raise _invalid("device.reference must be Device/<uuid>")
    patient = _patient(resource.get("subject"))
    text, moment = _effective(resource)
    identifiers = resource.get("identifier")
    client_id = None
    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], dict):
        client_id = identifiers[0].get("value")
    if client_id is not None and not isinstance(client_id, str):
        raise _invalid("identifier[0].value must be a string")

    if code == BP_PANEL:
        halves: dict[str, dict[str, Any]] = {}
        components = resource.get("component")
        for i, component in enumerate(components if isinstance(components, list) else []):
            part_code = _loinc(
                component.get("code") if isinstance(component, dict) else None,
                f"component[{i}].code",
            )
            part = _PARTS.get(part_code)
            if part is None:
                continue  # other components (e.g. a cuff position) are not stored
            value, unit = _quantity(component.get("valueQuantity"), f"component[{i}]")
            halves[part] = {
                "metric": part_code,
                "value": value,
                "unit": unit,
                "time": text,
                "id": None if client_id is None else f"{client_id}:{part}",
            }
        if set(halves) != {"systolic", "diastolic"}:
            raise _invalid("a blood pressure panel needs components 8480-6 and 8462-4")
        readings = [halves["systolic"], halves["diastolic"]]
    else:
        value, unit = _quantity(resource.get("valueQuantity"), "Observation")
        readings = [{"metric": code, "value": value, "unit": unit, "time": text, "id": client_id}]
    for reading in readings:
        if reading["id"] is None:
            del reading["id"]
    return MappedObservation(device_id, patient, moment, text, client_id, readings)
