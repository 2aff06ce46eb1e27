"""Device ingest over HTTP: ``POST /v1/readings`` with the device's own bearer token."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import IngestDep
from api.edge import EdgeDep
from ingest import (
    MAX_PAYLOAD_BYTES,
    BufferFullError,
    DatabaseUnavailableError,
    PayloadRejectedError,
)

router = APIRouter(prefix="/v1", tags=["device ingest"])

# A request still queued after this long is withdrawn and answered 503: nothing of it is
# stored. One already in a transaction is answered with that transaction's outcome instead
# (ingest.committer.GroupCommitter.submit), so a 503 always means "not kept".
COMMIT_TIMEOUT_S = 10.0
_STATUS_BY_REASON = {
    "malformed_json": status.HTTP_400_BAD_REQUEST,
    "payload_too_large": status.HTTP_413_CONTENT_TOO_LARGE,
    "invalid_payload": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "duplicate_member": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "device_mismatch": status.HTTP_403_FORBIDDEN,
}


class ReadingIn(BaseModel):
    """One reading (documentation of the wire format; the body is decoded by ingest)."""

    metric: str = Field(
        description="Catalogue code (e.g. spo2), LOINC code (2708-6), or "
        "blood_pressure / 85354-9 for a panel with systolic and diastolic"
    )
    value: float | None = Field(None, description="Value in `unit` (absent for a BP panel)")
    systolic: float | None = None
    diastolic: float | None = None
    unit: str = Field(description="UCUM unit, converted to the metric's canonical unit")
    time: str | int = Field(description="RFC 3339 with UTC offset, or epoch milliseconds")
    id: str | None = Field(None, description="The device's own reading id (optional)")


class ReadingsIn(BaseModel):
    device_id: str | None = Field(None, description="Optional; must be the token's device")
    readings: list[ReadingIn]


class RejectedOut(BaseModel):
    index: int = Field(description="Position of the reading in the request's readings array")
    reason: str
    detail: str


class IngestResult(BaseModel):
    batch_id: int
    stored: int
    duplicates: int = Field(description="Readings already stored (retries, redeliveries)")
    rejected: list[RejectedOut] = Field(description="Quarantined readings, each with why")


class Problem(BaseModel):
    reason: str
    detail: str


async def _read_at_most(request: Request, limit: int) -> bytes:
    """The body, cut after ``limit`` bytes: an oversize body is never buffered whole (ingest
    then refuses it as too large and quarantines the prefix)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


def _problem(code: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse(
        status_code=code, content={"reason": reason, "detail": detail}, headers=headers
    )


@router.post(
    "/readings",
    response_model=IngestResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ReadingsIn.model_json_schema()}},
        }
    },
    responses={
        400: {"model": Problem, "description": "Not JSON"},
        401: {"model": Problem, "description": "Missing or unknown device token"},
        403: {"model": Problem, "description": "Payload names another device"},
        408: {"model": Problem, "description": "The body did not arrive in time"},
        413: {"model": Problem, "description": "Payload too large"},
        415: {"model": Problem, "description": "A Content-Type other than JSON"},
        422: {
            "model": Problem,
            "description": "JSON that is not a readings payload, or repeats a member name",
        },
        429: {
            "model": Problem,
            "description": "Too many requests from this device, or too many failed "
            "authentications from this address; retry after Retry-After seconds",
        },
        503: {
            "model": Problem,
            "description": "Buffer full or database unavailable: nothing was stored; retry",
        },
    },
)
async def post_readings(
    request: Request,
    ingest: IngestDep,
    edge: EdgeDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Any:
    """Store a batch of one device's readings; answered after COMMIT.

    Every reading is stored, recognised as a duplicate of one already stored (a retry), or
    rejected with a specific reason (and kept in the quarantine). Retrying is always safe.
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _problem(
            401,
            "unauthenticated",
            "send the device token as 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    raw = await _read_at_most(request, MAX_PAYLOAD_BYTES + 1)
    try:
        # One deadline for the token lookup and the commit: a database that stops answering
        # gives a 503 the client may retry, never a hung request.
        async with asyncio.timeout(COMMIT_TIMEOUT_S):
            device = await ingest.devices.by_token(token.strip())
            if device is None:
                return _problem(
                    401,
                    "unknown_token",
                    "no device has this token",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            edge.admit_device(device.device_id)  # 429 when the device is over its rate
            report = await ingest.service.ingest(
                raw, source="http", device=device, claimed_device=str(device.device_id)
            )
    except PayloadRejectedError as exc:
        return _problem(_STATUS_BY_REASON.get(exc.reason, 422), exc.reason, exc.detail)
    except BufferFullError as exc:
        return _problem(503, "busy", str(exc), {"Retry-After": "1"})
    except (TimeoutError, DatabaseUnavailableError):
        return _problem(
            503,
            "database_unavailable",
            "nothing of this payload was stored (the database did not take it in time); "
            "retrying is safe (duplicates are recognised)",
            {"Retry-After": "5"},
        )
    return IngestResult(
        batch_id=report.batch_id,
        stored=report.stored,
        duplicates=report.duplicates,
        rejected=[
            RejectedOut(index=r.index, reason=r.reason, detail=r.detail) for r in report.rejected
        ],
    )
