"""``POST /v1/fhir``: a transaction or batch Bundle of Observations through device ingest.

Per entry: map (api.fhir.mapping), resolve the patient by external identifier, cross-check that
the Observation's device was assigned to *that* patient at the observation's time (the same
attribution rule ingest applies), then submit the readings to ingest as one device payload —
same validation, natural-key dedup, conflict detection and quarantine as a device's POST. What
is refused before ingest is quarantined too, through ingest, with its own reason
(``invalid_observation``, ``missing_device``, ``unknown_patient``, ``ambiguous_patient``,
``patient_mismatch``) and the raw Observation.

Outcomes per entry: ``201 Created`` (stored), ``200 OK`` (already stored: a re-import),
``409 Conflict`` (same device, metric and time with another value: quarantined, the stored value
is kept), ``400``/``422`` (refused; quarantined). Every refused entry carries an
OperationOutcome saying why.

Transaction semantics (``Bundle.type`` ``transaction``): all or nothing for everything decided
before storing. Every entry is mapped, its patient resolved and its attribution checked first;
if any entry fails, nothing is submitted, the answer is 400 with one OperationOutcome naming each
failing entry (``Bundle.entry[i]``), and the failing entries are quarantined. The checks that
ingest itself makes (range, unit, future time, conflicts with stored readings) cannot be undone
after the group committer has stored the other entries; they are reported per entry in the
``transaction-response`` like a batch. ``batch``: every entry on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from psycopg.rows import dict_row

from api.access import ScopedTransaction
from api.fhir.mapping import EntryRefused, MappedObservation, PatientIdentifier, map_observation
from api.fhir.resources import issue, now_instant, operation_outcome
from ingest import (
    DuplicateMemberError,
    IngestReport,
    IngestRuntime,
    PayloadRejectedError,
    loads_strict,
)
from schema.sql import queries

log = logging.getLogger(__name__)
_Q = queries("fhir")

MAX_BUNDLE_ENTRIES = 1000
BundleType = Literal["transaction", "batch"]
_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    400: "400 Bad Request",
    409: "409 Conflict",
    413: "413 Content Too Large",
    422: "422 Unprocessable Entity",
}


class BundleRefused(Exception):
    """The bundle as a whole is not importable (HTTP 400 with an OperationOutcome)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Entry:
    index: int
    resource: Any
    mapped: MappedObservation | None = None
    patient_id: uuid.UUID | None = None
    refused: EntryRefused | None = None
    report: IngestReport | None = None


def parse_bundle(raw: bytes) -> tuple[BundleType, list[Any]]:
    """The bundle's type and its entries' resources, or :class:`BundleRefused`."""
    try:
        body = loads_strict(raw)
    except DuplicateMemberError as exc:
        # As for device payloads: a repeated member (two entry arrays, two valueQuantity)
        # is ambiguous JSON; refused whole rather than read one way and silently lose the other.
        raise BundleRefused(
            "duplicate_member",
            f"member {json.dumps(exc.name)} appears more than once in one object",
        ) from None
    except RecursionError:  # the parser's own stack: nesting deeper than any FHIR resource
        raise BundleRefused(
            "malformed_json", "not JSON this server reads: nested too deeply"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleRefused("malformed_json", f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BundleRefused("invalid_bundle", "the body must be a FHIR Bundle resource")
    kind = body.get("type")
    if kind not in ("transaction", "batch"):
        raise BundleRefused(
            "invalid_bundle", f"Bundle.type must be transaction or batch, got {kind!r}"
        )
    entries = body.get("entry", [])
    if not isinstance(entries, list) or not entries:
        raise BundleRefused("invalid_bundle", "Bundle.entry must be a non-empty array")
    if len(entries) > MAX_BUNDLE_ENTRIES:
        raise BundleRefused("payload_too_large", f"more than {MAX_BUNDLE_ENTRIES} entries")
    resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
    return kind, resources


async def resolve_patients(tx: ScopedTransaction, entries: Sequence[Entry]) -> None:
    """Each mapped entry's patient: one live patient for its identifier, else refused."""
    by_identifier = {
        e.mapped.patient
        for e in entries
        if e.mapped is not None and isinstance(e.mapped.patient, PatientIdentifier)
    }
    own_ids = [
        e.mapped.patient
        for e in entries
        if e.mapped is not None and isinstance(e.mapped.patient, uuid.UUID)
    ]
    found: dict[PatientIdentifier, list[uuid.UUID]] = {}
    async with tx.conn.cursor(row_factory=dict_row) as cur:
        if by_identifier:
            ordered = sorted(by_identifier, key=lambda p: (p.system, p.value))
            await cur.execute(
                _Q["patients_by_identifier"],
                {"systems": [p.system for p in ordered], "values": [p.value for p in ordered]},
            )
            for row in await cur.fetchall():
                found[PatientIdentifier(row["system"], row["value"])] = row["patient_ids"] or []
        live: set[uuid.UUID] = set()
        if own_ids:
            await cur.execute(_Q["live_patients"], {"patient_ids": own_ids})
            live = {row["patient_id"] for row in await cur.fetchall()}
    for entry in entries:
        if entry.mapped is None:
            continue
        patient = entry.mapped.patient
        if isinstance(patient, uuid.UUID):
            if patient in live:
                entry.patient_id = patient
            else:
                entry.refused = EntryRefused("unknown_patient", f"no patient Patient/{patient}")
            continue
        candidates = found.get(patient, [])
        if len(candidates) == 1:
            entry.patient_id = candidates[0]
        elif not candidates:
            entry.refused = EntryRefused(
                "unknown_patient", f"no patient has identifier {patient.system}|{patient.value}"
            )
        else:
            entry.refused = EntryRefused(
                "ambiguous_patient",
                f"{len(candidates)} patients share identifier {patient.system}|{patient.value}: "
                "not guessed",
            )


async def check_attribution(
    runtime: IngestRuntime, entries: Sequence[Entry]
) -> dict[uuid.UUID, Any]:
    """Refuse entries whose device was assigned to another patient at the observation's time.

    Returns the device contexts for ingest. A device that is unknown, or not assigned at that
    time, is left to ingest, which quarantines it with its own reason (unknown_device,
    no_assignment) like any device payload.
    """
    wanted = {e.mapped.device_id for e in entries if e.mapped is not None and e.refused is None}
    contexts = {device: await runtime.devices.by_id(device) for device in sorted(wanted)}
    for entry in entries:
        if entry.mapped is None or entry.refused is not None or entry.mapped.effective is None:
            continue
        context = contexts.get(entry.mapped.device_id)
        if context is None:
            continue
        moment = entry.mapped.effective
        for assignment in context.assignments:
            if assignment.valid_from <= moment and (
                assignment.valid_until is None or moment < assignment.valid_until
            ):
                if assignment.patient_id != entry.patient_id:
                    entry.refused = EntryRefused(
                        "patient_mismatch",
                        f"device {entry.mapped.device_id} was assigned to another patient at "
                        f"{entry.mapped.effective_text}, not to the patient the subject names",
                    )
                break
    return contexts


def _raw(kind: BundleType, entry: Entry, readings: list[dict[str, Any]] | None = None) -> bytes:
    """The payload kept in the quarantine: the original Observation (and, for ingest, the
    device payload it was translated to; ingest ignores the extra member)."""
    body: dict[str, Any] = {
        "fhir": {"bundle_type": kind, "entry": entry.index, "resource": entry.resource}
    }
    if readings is not None and entry.mapped is not None:
        body = {"device_id": str(entry.mapped.device_id), "readings": readings, **body}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


async def quarantine_refused(
    runtime: IngestRuntime, kind: BundleType, entries: Sequence[Entry]
) -> None:
    for entry in entries:
        if entry.refused is None:
            continue
        log.warning(
            "FHIR entry quarantined: %s",
            entry.refused.reason,
            extra={"entry": entry.index, "detail": entry.refused.detail},
        )
        await runtime.service.quarantine(
            _raw(kind, entry),
            source="fhir",
            reason=entry.refused.reason,
            detail=f"Bundle.entry[{entry.index}]: {entry.refused.detail}",
            claimed_device=None if entry.mapped is None else str(entry.mapped.device_id),
        )


async def submit(
    runtime: IngestRuntime,
    kind: BundleType,
    entries: Sequence[Entry],
    contexts: dict[uuid.UUID, Any],
) -> None:
    """Every accepted entry to ingest, concurrently: the group committer batches them."""

    async def one(entry: Entry) -> None:
        assert entry.mapped is not None
        try:
            entry.report = await runtime.service.ingest(
                _raw(kind, entry, entry.mapped.readings),
                source="fhir",
                device=contexts.get(entry.mapped.device_id),
                claimed_device=str(entry.mapped.device_id),
            )
        except PayloadRejectedError as exc:
            # Already quarantined whole by ingest.
            entry.refused = EntryRefused(
                exc.reason, exc.detail, 413 if exc.reason == "payload_too_large" else 400
            )

    await asyncio.gather(*(one(e) for e in entries if e.refused is None and e.mapped is not None))


def _entry_response(entry: Entry) -> dict[str, Any]:
    where = f"Bundle.entry[{entry.index}]"
    if entry.refused is not None:
        status = entry.refused.status
        outcome = operation_outcome(
            issue(
                "error",
                "invalid" if status == 400 else "processing",
                f"{entry.refused.reason}: {entry.refused.detail}",
                expression=where,
            )
        )
        return {"status": _STATUS_TEXT[status], "outcome": outcome}
    report = entry.report
    assert report is not None
    if report.rejected:
        conflict = all(r.reason == "conflict" for r in report.rejected)
        status = 409 if conflict else 422
        outcome = operation_outcome(
            *(
                issue(
                    "error",
                    "conflict" if r.reason == "conflict" else "processing",
                    f"{r.reason}: {r.detail}",
                    expression=where,
                )
                for r in report.rejected
            )
        )
        return {"status": _STATUS_TEXT[status], "outcome": outcome}
    return {"status": _STATUS_TEXT[201 if report.stored else 200]}


def response_bundle(kind: BundleType, entries: Sequence[Entry]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "timestamp": now_instant(),
        "entry": [{"response": _entry_response(e)} for e in entries],
    }


def transaction_refusal(entries: Sequence[Entry]) -> dict[str, Any]:
    """The OperationOutcome of a transaction refused whole: every failing entry, and why."""
    issues = [
        issue(
            "error",
            "invalid" if e.refused.status == 400 else "processing",
            f"{e.refused.reason}: {e.refused.detail}",
            expression=f"Bundle.entry[{e.index}]",
        )
        for e in entries
        if e.refused is not None
    ]
    issues.append(
        issue(
            "information",
            "informational",
            "transaction refused: nothing was stored; the entries above were quarantined",
        )
    )
    return operation_outcome(*issues)


def summary(entries: Sequence[Entry]) -> dict[str, int]:
    stored = sum(e.report.stored for e in entries if e.report is not None)
    duplicates = sum(e.report.duplicates for e in entries if e.report is not None)
    rejected = sum(1 for e in entries if e.refused is not None or (e.report and e.report.rejected))
    return {
        "entries": len(entries),
        "stored": stored,
        "duplicates": duplicates,
        "rejected": rejected,
    }


def map_entries(resources: Sequence[Any]) -> list[Entry]:
    entries = []
    for index, resource in enumerate(resources):
        entry = Entry(index, resource)
        try:
            entry.mapped = map_observation(resource)
        except EntryRefused as refused:
            entry.refused = refused
        entries.append(entry)
    return entries
