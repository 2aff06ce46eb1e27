"""The clinician's patients: panel, one patient, latest vitals."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field
from pydantic_core import to_json

from api.access import NotVisibleError, audited_read, scoped_transaction
from api.deps import ApiPoolDep, CareUser, RouteDep
from api.pagination import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    PageSize,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
    invalid_input,
)
from api.types import Text
from schema.rollup_levels import ROLLUP_WIDTHS, Resolution, bucket_count, choose_resolution
from schema.sql import queries

router = APIRouter(prefix="/v1/patients", tags=["patients"])
_Q = queries("clinician")
_FIRST_PATIENT = uuid.UUID(int=0)
MAX_BUCKETS = 5000
MAX_RAW_RANGE = timedelta(hours=24)
MAX_RAW_POINTS = 20_000
_SEVERITY_BY_RANK = {1: "critical", 2: "major", 3: "minor", 4: "warning"}


class Vital(BaseModel):
    metric: str = Field(description="Catalogue code, e.g. spo2")
    loinc_code: str
    display_name: str
    unit: str = Field(description="The metric's canonical UCUM unit")
    value: float
    measured_at: datetime = Field(description="Measurement time (UTC)")
    utc_offset_minutes: int | None = Field(description="The device's local offset, if sent")
    received_at: datetime
    device_id: uuid.UUID


class PanelPatient(BaseModel):
    patient_id: uuid.UUID
    given_name: str | None
    family_name: str | None
    birth_date: date | None
    open_alerts: int
    worst_open_severity: str | None
    latest_vitals: list[Vital]


class PanelPage(BaseModel):
    items: list[PanelPatient]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end")


class Identifier(BaseModel):
    system: str
    value: str
    type_code: str


class AssignedDevice(BaseModel):
    device_id: uuid.UUID
    kind: str
    manufacturer: str
    model: str
    status: str
    valid_from: datetime
    valid_until: datetime | None


class PatientDetail(BaseModel):
    patient_id: uuid.UUID
    created_at: datetime
    given_name: str | None
    family_name: str | None
    birth_date: date | None
    sex: str | None
    identifiers: list[Identifier]
    devices: list[AssignedDevice]
    open_alerts: int


class TimelinePoint(BaseModel):
    bucket_start: datetime = Field(
        description="Start of the bucket (UTC); the reading's time for raw"
    )
    count: int = Field(description="Readings in the bucket; 0 marks a gap (the rest is null)")
    min: float | None
    max: float | None
    avg: float | None
    last: float | None = Field(description="The value measured last in the bucket")
    last_at: datetime | None


class Timeline(BaseModel):
    patient_id: uuid.UUID
    metric: str
    unit: str
    resolution: Resolution = Field(description="The resolution used (auto resolves to one)")
    start: datetime
    end: datetime
    points: list[TimelinePoint]


class LatestVitals(BaseModel):
    patient_id: uuid.UUID
    vitals: list[Vital]


def _vital(row: dict[str, Any]) -> Vital:
    return Vital(
        metric=row["code"],
        loinc_code=row["loinc_code"],
        display_name=row["display_name"],
        unit=row["canonical_unit"],
        value=row["value"],
        measured_at=row["measured_at"],
        utc_offset_minutes=row["utc_offset_minutes"],
        received_at=row["received_at"],
        device_id=row["device_id"],
    )


def _panel_key(cursor: str | None) -> tuple[int, uuid.UUID]:
    if cursor is None:
        return 0, _FIRST_PATIENT
    rank, patient = decode_cursor(cursor, 2)
    try:
        return int(rank), uuid.UUID(str(patient))
    except (TypeError, ValueError):
        raise invalid_cursor() from None


@router.get("", response_model=PanelPage, summary="My panel")
async def panel(
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    limit: PageSize = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> PanelPage:
    """The patients of my care teams with their latest vitals and open alerts, the most severe
    open alert first."""
    after_rank, after_patient = _panel_key(cursor)
    async with scoped_transaction(pool, user, route=route, action="list_patients") as tx:
        async with tx.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _Q["panel"],
                {"after_rank": after_rank, "after_patient": after_patient, "limit": limit},
            )
            rows = await cur.fetchall()
            ids = [row["patient_id"] for row in rows]
            await cur.execute(_Q["latest_vitals"], {"patients": ids})
            vitals: dict[uuid.UUID, list[Vital]] = {}
            for vital in await cur.fetchall():
                vitals.setdefault(vital["patient_id"], []).append(_vital(vital))
        for patient_id in ids:
            tx.audit("list_patients", patient_id=patient_id)
    items = [
        PanelPatient(
            patient_id=row["patient_id"],
            given_name=row["given_name"],
            family_name=row["family_name"],
            birth_date=row["birth_date"],
            open_alerts=row["open_alerts"],
            worst_open_severity=_SEVERITY_BY_RANK.get(row["severity_rank"]),
            latest_vitals=vitals.get(row["patient_id"], []),
        )
        for row in rows
    ]
    next_cursor = (
        encode_cursor(rows[-1]["severity_rank"], rows[-1]["patient_id"])
        if len(rows) == limit
        else None
    )
    return PanelPage(items=items, next_cursor=next_cursor)


@router.get("/{patient_id}", response_model=PatientDetail, summary="One patient")
async def patient(
    patient_id: uuid.UUID, user: CareUser, pool: ApiPoolDep, route: RouteDep
) -> PatientDetail:
    """Demographics, identifiers, assigned devices and the open alert count."""
    async with scoped_transaction(pool, user, route=route, action="read_patient") as tx:
        async with tx.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_Q["patient"], {"patient_id": patient_id})
            row = await cur.fetchone()
            if row is None:
                raise NotVisibleError("patient", patient_id=patient_id)
            await cur.execute(_Q["patient_identifiers"], {"patient_id": patient_id})
            identifiers = [Identifier(**r) for r in await cur.fetchall()]
            await cur.execute(_Q["patient_devices"], {"patient_id": patient_id})
            devices = [AssignedDevice(**r) for r in await cur.fetchall()]
            await cur.execute(_Q["patient_open_alerts"], {"patient_id": patient_id})
            open_row = await cur.fetchone()
        tx.audit("read_patient", patient_id=patient_id)
    return PatientDetail(
        **row,
        identifiers=identifiers,
        devices=devices,
        open_alerts=int(open_row["count"]) if open_row else 0,
    )


@router.get("/{patient_id}/vitals/latest", response_model=LatestVitals, summary="Latest vitals")
async def latest_vitals(
    patient_id: uuid.UUID, user: CareUser, pool: ApiPoolDep, route: RouteDep
) -> LatestVitals:
    """The newest reading of each metric (newest by measurement time, not by arrival)."""
    # One statement checks, reads and audits; one round trip with the COMMIT.
    rows = await audited_read(
        pool,
        user,
        route=route,
        action="read_latest_vitals",
        patient_id=patient_id,
        query=_Q["audited_latest_vitals"],
    )
    vitals = [_vital(r) for r in rows if r["code"] is not None]
    return LatestVitals(patient_id=patient_id, vitals=vitals)


# Readings exist only in ingest's range (1970 to the end of 9999, UTC). Beyond it the bucket
# arithmetic leaves what a timestamp holds (before year 1 or after year 9999 once an offset is
# applied) and the database's answer cannot be read back: a range there is refused by name.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise invalid_input(("query", name), f"{name} must be a date-time with a UTC offset")
    # Compared as instants: 0001-01-01T00:00:00+01:00 is year 0 in UTC, and is refused.
    if not _EARLIEST <= value <= _LATEST:
        raise invalid_input(
            ("query", name),
            f"{name} must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z "
            "(the range readings are stored in)",
        )
    return value


@router.get("/{patient_id}/vitals", response_model=Timeline, summary="A metric's timeline")
async def timeline(
    patient_id: uuid.UUID,
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    metric: Annotated[Text, Query(description="Catalogue code or LOINC code, e.g. spo2")],
    start: Annotated[datetime, Query(description="Inclusive, RFC 3339 with offset")],
    end: Annotated[datetime, Query(description="Exclusive, RFC 3339 with offset")],
    resolution: Annotated[
        Literal["raw", "1m", "1h", "1d", "auto"],
        Query(description="auto: the coarsest rollup that still gives `points` buckets"),
    ] = "auto",
    points: Annotated[int, Query(ge=1, le=MAX_BUCKETS)] = 200,
) -> Response:
    """min/max/avg/count/last per bucket, with explicit gap buckets (count 0) where the
    patient's devices sent nothing. Ranges are capped: at most 5000 buckets, and raw readings
    over at most 24 hours."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        raise invalid_input(("query", "end"), "end must be after start")
    chosen: Resolution = (
        choose_resolution(start, end, points) if resolution == "auto" else resolution
    )
    if chosen == "raw":
        if end - start > MAX_RAW_RANGE:
            raise invalid_input(
                ("query", "resolution"), "raw readings span at most 24 hours: use a rollup"
            )
    elif bucket_count(start, end, ROLLUP_WIDTHS[chosen]) > MAX_BUCKETS:
        raise invalid_input(
            ("query", "resolution"),
            f"more than {MAX_BUCKETS} {chosen} buckets: choose a coarser resolution",
        )
    async with scoped_transaction(pool, user, route=route, action="read_vitals") as tx:
        # Both statements go out together (pipeline): the checks, and the timeline, which is
        # empty for an invisible patient or an unknown metric; the checks decide the answer.
        params = {
            "patient_id": patient_id,
            "metric": metric,
            "start": start,
            "end": end,
            "resolution": chosen,
            "limit": MAX_RAW_POINTS + 1,
        }
        async with (
            tx.conn.cursor(row_factory=dict_row) as check,
            tx.conn.cursor(row_factory=dict_row) as cur,
        ):
            await check.execute(_Q["patient_metric"], params)
            await cur.execute(_Q["vitals_timeline_by_code"], params)
            found = await check.fetchone()
            rows = await cur.fetchall()
        if found is None or not found["visible"]:
            raise NotVisibleError("patient", patient_id=patient_id)
        if found["metric_id"] is None:
            raise invalid_input(("query", "metric"), f"unknown metric {metric!r}")
        if len(rows) > MAX_RAW_POINTS:
            raise invalid_input(
                ("query", "resolution"),
                f"more than {MAX_RAW_POINTS} raw readings: use a rollup or a shorter range",
            )
        tx.audit("read_vitals", patient_id=patient_id, metric=found["code"], resolution=chosen)
    # Up to 5000 buckets: building a model per bucket and FastAPI's validating them again on
    # the way out cost 3-4 times the query (about 15 ms for a day of minutes). The rows come
    # from the database with exactly TimelinePoint's fields and types, so they are serialized
    # as they are: the same JSON as Timeline's (a test compares), without the copies.
    body = {
        "patient_id": patient_id,
        "metric": found["code"],
        "unit": found["canonical_unit"],
        "resolution": chosen,
        "start": start,
        "end": end,
        "points": rows,
    }
    return Response(to_json(body), media_type="application/json")
