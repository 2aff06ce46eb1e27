"""FHIR R4: vitals as vital-signs Observations (search), Observation bundles in (import).

Export runs like every clinician route: one scoped, audited transaction as rpmstore_api, the
readings read only through the scoping function rpm.fhir_patient_readings. Import is an admin
operation (it resolves patients across every care team) and writes through device ingest.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row

from api.access import NotVisibleError, scoped_transaction
from api.deps import AdminUser, ApiPoolDep, CareUser, IngestDep, RouteDep
from api.fhir import export, importer
from api.fhir.resources import FHIR_JSON, fhir_response, now_instant, outcome_response
from api.pagination import encode_cursor, read_cursor
from api.routes.readings import COMMIT_TIMEOUT_S
from ingest import BufferFullError, DatabaseUnavailableError
from schema.sql import queries

log = logging.getLogger(__name__)
router = APIRouter(tags=["FHIR"])
_Q = queries("fhir")
MAX_COUNT = 200
DEFAULT_COUNT = 50
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
_FHIR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {FHIR_JSON: {"schema": {"type": "object"}}}, "description": "A Bundle"},
    400: {
        "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        "description": "OperationOutcome: a parameter or bundle this server cannot honour",
    },
}

Count = Annotated[
    int, Query(alias="_count", ge=1, le=MAX_COUNT, description="Observations per page")
]
PageCursor = Annotated[
    str | None, Query(alias="_cursor", max_length=512, description="From the `next` link")
]
Code = Annotated[
    str | None,
    Query(description="LOINC codes, comma-separated, optionally `http://loinc.org|<code>`"),
]
Dates = Annotated[
    list[str] | None,
    Query(description="Repeatable: `ge`/`gt`/`le`/`lt`/`eq` + FHIR date or dateTime with offset"),
]


async def _read_at_most(request: Request, limit: int) -> bytes:
    """The body, cut after ``limit`` bytes (an oversize bundle is never buffered whole)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


async def _catalogue(cur: Any) -> export.MetricCatalogue:
    await cur.execute(_Q["metric_catalogue"])
    metrics = [export.Metric(**row) for row in await cur.fetchall()]
    await cur.execute(_Q["metric_aliases"])
    aliases = [(row["alias"], row["metric_id"]) for row in await cur.fetchall()]
    return export.MetricCatalogue.build(metrics, aliases)


def _after(cursor: str | None) -> tuple[datetime | None, uuid.UUID | None, str | None]:
    if cursor is None:
        return None, None, None
    # Named as the client sends it (_cursor); the clinician routes' shared error says cursor.
    refused = export.SearchParameterError(
        "_cursor is not one this server issued", parameter="_cursor"
    )
    found = read_cursor(cursor, 3)
    if found is None:
        raise refused
    at, device, key = found
    try:
        after = datetime.fromisoformat(str(at))
        return after, uuid.UUID(str(device)), str(key)
    except ValueError:
        raise refused from None


async def _search(
    *,
    request: Request,
    patient_id: uuid.UUID,
    user: Any,
    pool: Any,
    route: str,
    code: str | None,
    dates: list[str],
    count: int,
    cursor: str | None,
    hide_refusal: bool,
) -> JSONResponse:
    try:
        window = export.parse_dates(dates)
        after_at, after_device, after_key = _after(cursor)
        async with scoped_transaction(
            pool, user, route=route, action="fhir_search_observations"
        ) as tx:
            async with tx.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(_Q["visible_patient"], {"patient_id": patient_id})
                if await cur.fetchone() is None:
                    raise NotVisibleError("patient", patient_id=patient_id)
                catalogue = await _catalogue(cur)
                metrics = export.parse_codes(code, catalogue)
                # A group is at most two rows (a BP pair): 2 * count + 1 rows always hold
                # count complete groups and tell whether more follow.
                await cur.execute(
                    _Q["observations"],
                    {
                        "patient_id": patient_id,
                        "metrics": metrics,
                        "start": window.start,
                        "end": window.end,
                        "after_at": after_at,
                        "after_device": after_device,
                        "after_key": after_key,
                        "limit": 2 * count + 1,
                    },
                )
                rows = await cur.fetchall()
            groups = export.group_rows(rows)
            more = len(rows) == 2 * count + 1
            if more:
                groups = groups[:-1]  # possibly cut in half by the LIMIT
            more = more or len(groups) > count
            groups = groups[:count]
            tx.audit(
                "fhir_search_observations",
                patient_id=patient_id,
                code=code,
                readings=sum(len(g) for g in groups),
            )
    except export.SearchParameterError as exc:
        return outcome_response(400, "invalid", str(exc), expression=exc.parameter)
    except NotVisibleError:
        # Audited as not_found by scoped_transaction. FHIR search answers an empty searchset
        # (the same as a visible patient without readings: no oracle); the patient's own
        # compartment route answers 404 like every clinician route.
        if not hide_refusal:
            return outcome_response(404, "not-found", "patient not found")
        groups, more = [], False
    entries = [
        {"fullUrl": f"urn:uuid:{obs['id']}", "resource": obs, "search": {"mode": "match"}}
        for group in groups
        for obs in export.observations(group, patient_id, catalogue)
    ]
    links = [{"relation": "self", "url": str(request.url)}]
    if more:
        last = groups[-1][0]
        next_cursor = encode_cursor(
            last["measured_at"].isoformat(), last["device_id"], last["resource_key"]
        )
        links.append(
            {"relation": "next", "url": str(request.url.include_query_params(_cursor=next_cursor))}
        )
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "timestamp": now_instant(),
            "link": links,
            "entry": entries,
        }
    )


@router.get(
    "/v1/fhir/Observation",
    summary="Search vital-signs Observations (FHIR R4)",
    response_class=JSONResponse,
    responses=_FHIR_RESPONSES,
)
async def search_observations(
    request: Request,
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    patient: Annotated[str, Query(description="Patient/<id> or <id> (required)")],
    code: Code = None,
    date: Dates = None,
    count: Count = DEFAULT_COUNT,
    cursor: PageCursor = None,
) -> JSONResponse:
    """A searchset Bundle of the patient's vital-signs Observations, oldest first, paged with
    `next` links. Blood pressure comes as the panel 85354-9. A patient outside my care teams
    gives an empty Bundle (audited)."""
    try:
        patient_id = export.parse_patient(patient)
    except export.SearchParameterError as exc:
        return outcome_response(400, "invalid", str(exc), expression=exc.parameter)
    return await _search(
        request=request,
        patient_id=patient_id,
        user=user,
        pool=pool,
        route=route,
        code=code,
        dates=date or [],
        count=count,
        cursor=cursor,
        hide_refusal=True,
    )


@router.get(
    "/v1/patients/{patient_id}/fhir/Observation",
    summary="One patient's vital-signs Observations (FHIR R4)",
    response_class=JSONResponse,
    responses={
        **_FHIR_RESPONSES,
        404: {"content": {FHIR_JSON: {"schema": {"type": "object"}}}, "description": "Not found"},
    },
)
async def patient_observations(
    patient_id: uuid.UUID,
    request: Request,
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    code: Code = None,
    date: Dates = None,
    count: Count = DEFAULT_COUNT,
    cursor: PageCursor = None,
) -> JSONResponse:
    """The same search in the patient's compartment; 404 for a patient I may not see."""
    return await _search(
        request=request,
        patient_id=patient_id,
        user=user,
        pool=pool,
        route=route,
        code=code,
        dates=date or [],
        count=count,
        cursor=cursor,
        hide_refusal=False,
    )


@router.post(
    "/v1/fhir",
    summary="Import a transaction or batch Bundle of Observations (FHIR R4)",
    response_class=JSONResponse,
    responses={
        **_FHIR_RESPONSES,
        503: {"content": {FHIR_JSON: {"schema": {"type": "object"}}}, "description": "Retry"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        }
    },
)
async def import_bundle(
    request: Request, user: AdminUser, pool: ApiPoolDep, route: RouteDep, ingest: IngestDep
) -> JSONResponse:
    """Observations stored through device ingest (same validation, dedup and quarantine).
    Patients are matched by `subject.identifier` (system + value); the device
    (`Device/<uuid>`) is required and must be assigned to that patient at the observation's
    time. Answers a transaction-response / batch-response Bundle with a status per entry and an
    OperationOutcome for each refused entry; a transaction with an entry refused before
    storing is refused whole (400, nothing stored)."""
    raw = await _read_at_most(request, MAX_BUNDLE_BYTES + 1)
    try:
        if len(raw) > MAX_BUNDLE_BYTES:
            raise importer.BundleRefused("payload_too_large", f"more than {MAX_BUNDLE_BYTES} bytes")
        kind, resources = importer.parse_bundle(raw)
    except importer.BundleRefused as exc:
        await ingest.service.quarantine(
            raw[:MAX_BUNDLE_BYTES], source="fhir", reason=exc.reason, detail=exc.detail
        )
        code = 413 if exc.reason == "payload_too_large" else 400
        return outcome_response(code, "invalid" if code == 400 else "too-costly", exc.detail)
    entries = importer.map_entries(resources)
    async with scoped_transaction(pool, user, route=route, action="fhir_import") as tx:
        await importer.resolve_patients(tx, entries)
        for patient_id in sorted({e.patient_id for e in entries if e.patient_id is not None}):
            tx.audit("fhir_import", patient_id=patient_id, bundle_type=kind)
    try:
        async with asyncio.timeout(COMMIT_TIMEOUT_S):
            contexts = await importer.check_attribution(ingest, entries)
            await importer.quarantine_refused(ingest, kind, entries)
            if kind == "transaction" and any(e.refused is not None for e in entries):
                return fhir_response(importer.transaction_refusal(entries), 400)
            await importer.submit(ingest, kind, entries, contexts)
    except BufferFullError as exc:
        return outcome_response(503, "transient", str(exc), {"Retry-After": "1"})
    except (TimeoutError, DatabaseUnavailableError):
        return outcome_response(
            503,
            "transient",
            "not confirmed stored in time; retrying the bundle is safe (duplicates are recognised)",
            {"Retry-After": "5"},
        )
    log.info("FHIR bundle imported", extra={"bundle_type": kind, **importer.summary(entries)})
    return fhir_response(importer.response_bundle(kind, entries))


_FHIR_ENDPOINTS = frozenset(route.endpoint for route in router.routes if hasattr(route, "endpoint"))


def is_fhir_request(request: Request) -> bool:
    """Whether ``request`` was routed to a FHIR operation (whose errors are OperationOutcomes)."""
    route = request.scope.get("route")
    return getattr(route, "endpoint", None) in _FHIR_ENDPOINTS


def drop_validation_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document without FastAPI's generated 422 on the FHIR operations: their
    invalid parameters are answered 400 with an OperationOutcome (``api.errors``)."""
    fhir_paths = {getattr(route, "path", None) for route in router.routes}
    for path, operations in schema.get("paths", {}).items():
        if path in fhir_paths:
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
    return schema
