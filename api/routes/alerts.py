"""The alert inbox and the alert lifecycle (acknowledge, resolve)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from alerting import (
    AlertNotFoundError,
    IllegalAlertTransitionError,
    acknowledge_alert,
    resolve_alert,
)
from api.access import NotVisibleError, scoped_transaction
from api.auth import Principal
from api.deps import ApiPoolDep, CareUser, RouteDep
from api.json_body import StrictJsonRoute
from api.pagination import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    PageSize,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
)
from api.types import Note
from schema.sql import queries

router = APIRouter(prefix="/v1/alerts", tags=["alerts"], route_class=StrictJsonRoute)
_Q = queries("clinician")
_NEWEST = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))

AlertStatus = Literal["open", "acknowledged", "resolved"]
Severity = Literal["critical", "major", "minor", "warning"]


class Alert(BaseModel):
    alert_id: uuid.UUID
    patient_id: uuid.UUID
    rule_id: uuid.UUID
    status: AlertStatus
    severity: Severity
    rule_snapshot: dict[str, Any] = Field(
        description="The rule and thresholds that fired this alert, as they were then"
    )
    first_breach_at: datetime
    last_breach_at: datetime
    last_value: float | None
    peak_value: float | None = Field(description="The most extreme breaching value")
    breach_count: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_note: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class TransitionIn(BaseModel):
    note: Note | None = Field(None, description="Why (kept with the alert and its event)")


class AlertPage(BaseModel):
    items: list[Alert]
    next_cursor: str | None


def _inbox_key(cursor: str | None) -> tuple[datetime, uuid.UUID]:
    if cursor is None:
        return _NEWEST
    breach, alert = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(str(breach)), uuid.UUID(str(alert))
    except ValueError:
        raise invalid_cursor() from None


@router.get("", response_model=AlertPage, summary="Alert inbox")
async def inbox(
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    status_filter: Annotated[AlertStatus | None, Query(alias="status")] = None,
    severity: Severity | None = None,
    patient_id: uuid.UUID | None = None,
    limit: PageSize = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> AlertPage:
    """Alerts of my patients, newest breach first."""
    before_time, before_alert = _inbox_key(cursor)
    async with scoped_transaction(pool, user, route=route, action="list_alerts") as tx:
        async with tx.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _Q["alert_inbox"],
                {
                    "status": status_filter,
                    "severity": severity,
                    "patient_id": patient_id,
                    "before_time": before_time,
                    "before_alert": before_alert,
                    "limit": limit,
                },
            )
            rows = await cur.fetchall()
        for patient in dict.fromkeys(row["patient_id"] for row in rows):
            tx.audit("list_alerts", patient_id=patient)
    next_cursor = (
        encode_cursor(rows[-1]["first_breach_at"].isoformat(), rows[-1]["alert_id"])
        if len(rows) == limit
        else None
    )
    return AlertPage(items=[Alert(**row) for row in rows], next_cursor=next_cursor)


async def _transition(
    alert_id: uuid.UUID,
    body: TransitionIn | None,
    user: Principal,
    pool: AsyncConnectionPool[Any],
    route: str,
    action: str,
) -> Alert:
    note = body.note if body else None
    try:
        async with scoped_transaction(pool, user, route=route, action=action) as tx:
            change = acknowledge_alert if action == "acknowledge_alert" else resolve_alert
            try:
                row = await change(tx.conn, alert_id=alert_id, actor=user.subject, note=note)
            except AlertNotFoundError:
                # Not there, or another team's: the same answer.
                raise NotVisibleError("alert") from None
            tx.audit(action, patient_id=row["patient_id"], alert_id=str(alert_id))
    except IllegalAlertTransitionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Alert(**{k: v for k, v in row.items() if k in Alert.model_fields})


@router.post("/{alert_id}/ack", response_model=Alert, summary="Acknowledge an alert")
async def acknowledge(
    alert_id: uuid.UUID,
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    body: TransitionIn | None = None,
) -> Alert:
    """open -> acknowledged, recording who, when and the note; 409 from any other status."""
    return await _transition(alert_id, body, user, pool, route, "acknowledge_alert")


@router.post("/{alert_id}/resolve", response_model=Alert, summary="Resolve an alert")
async def resolve(
    alert_id: uuid.UUID,
    user: CareUser,
    pool: ApiPoolDep,
    route: RouteDep,
    body: TransitionIn | None = None,
) -> Alert:
    """open or acknowledged -> resolved (manually); 409 if it is already resolved."""
    return await _transition(alert_id, body, user, pool, route, "resolve_alert")
