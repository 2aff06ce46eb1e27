"""``GET /v1/audit``: the append-only audit trail, for admins."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from psycopg.rows import dict_row
from pydantic import BaseModel

from api.access import scoped_transaction
from api.deps import AdminUser, ApiPoolDep, RouteDep
from api.pagination import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    PageSize,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
)
from api.types import Text
from schema.sql import queries

router = APIRouter(prefix="/v1/audit", tags=["audit"])
_Q = queries("clinician")
_NEWEST = 2**63 - 1


class AuditRecord(BaseModel):
    audit_id: int
    occurred_at: datetime
    actor_subject: str
    actor_role: str
    patient_id: uuid.UUID | None
    action: str
    route: str
    outcome: str
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None


@router.get("", response_model=AuditPage, summary="Audit trail")
async def audit_trail(
    user: AdminUser,
    pool: ApiPoolDep,
    route: RouteDep,
    patient_id: uuid.UUID | None = None,
    subject: Annotated[Text | None, Query(description="Only this actor's records")] = None,
    limit: PageSize = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> AuditPage:
    """Who read or changed which patient's data, newest first. Reading it is audited too."""
    before = _NEWEST
    if cursor is not None:
        (key,) = decode_cursor(cursor, 1)
        if type(key) is not int:
            raise invalid_cursor()
        before = key
    async with scoped_transaction(pool, user, route=route, action="read_audit") as tx:
        async with tx.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _Q["audit_page"],
                {"before": before, "patient_id": patient_id, "subject": subject, "limit": limit},
            )
            rows = await cur.fetchall()
        tx.audit("read_audit", patient_id=patient_id)
    next_cursor = encode_cursor(rows[-1]["audit_id"]) if len(rows) == limit else None
    return AuditPage(items=[AuditRecord(**row) for row in rows], next_cursor=next_cursor)
