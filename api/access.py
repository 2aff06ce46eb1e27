"""Scoped, audited transactions for everything that touches patient data.

Every clinician route runs its statements inside :func:`scoped_transaction`: one transaction on the
API's own role (rpmstore_api: owns nothing, no BYPASSRLS) that first states who is acting, so
PostgreSQL's row-level security shows only that user's patients, and that writes the audit
records of the request before COMMIT: the read or change and its audit record commit together,
or neither does.

A patient, alert or device the user may not see is indistinguishable from one that does not
exist (404, never 403: no BOLA oracle). That refusal is audited too, in its own transaction
after the request's transaction is rolled back, so nothing the request did half-way survives
(a single-statement read, :func:`audited_read`, records its refusal itself: it did nothing else).

Round trips: the connection runs in pipeline mode, so BEGIN and the acting user travel with the
route's first statement, and the audit records (one INSERT for all of them) with COMMIT; a
read of one patient costs two round trips to the server, whatever it reads. A read that is a
single statement writing its own audit record (:func:`audited_read`) costs one. The COMMIT
stays synchronous: the audit record is durable before the answer leaves.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.auth import Principal
from schema.sql import queries

log = logging.getLogger(__name__)
_Q = queries("clinician")


class NotVisibleError(LookupError):
    """The object does not exist or the acting user may not see it (HTTP 404)."""

    def __init__(self, what: str, *, patient_id: uuid.UUID | None = None) -> None:
        super().__init__(f"{what} not found")
        self.patient_id = patient_id


class UnsafeApiRoleError(RuntimeError):
    """The API's database role could bypass row-level security."""


@dataclass
class _AuditRecord:
    action: str
    patient_id: uuid.UUID | None
    details: dict[str, Any]


@dataclass
class ScopedTransaction:
    conn: psycopg.AsyncConnection[Any]
    principal: Principal
    route: str
    records: list[_AuditRecord] = field(default_factory=list)

    def audit(self, action: str, *, patient_id: uuid.UUID | None = None, **details: Any) -> None:
        """Record that this request read or changed ``patient_id``'s data (written at commit)."""
        self.records.append(_AuditRecord(action, patient_id, details))


async def _set_acting_user(conn: psycopg.AsyncConnection[Any], principal: Principal) -> None:
    await conn.execute(
        _Q["set_acting_user"],
        {
            "subject": principal.subject,
            "roles": ",".join(sorted(principal.roles)),
            "care_teams": ",".join(str(team) for team in principal.care_teams),
        },
    )


async def _write_audit(
    conn: psycopg.AsyncConnection[Any],
    principal: Principal,
    route: str,
    records: list[_AuditRecord],
    outcome: str,
) -> None:
    """One INSERT for all the request's records (queued: it is sent with the COMMIT)."""
    if not records:
        return
    await conn.execute(
        _Q["insert_audit"],
        {
            "subject": principal.subject,
            "role": principal.audit_role,
            "patient_ids": [record.patient_id for record in records],
            "actions": [record.action for record in records],
            "route": route,
            "outcome": outcome,
            "details": [Jsonb(record.details) for record in records],
        },
    )


@asynccontextmanager
async def scoped_transaction(
    pool: AsyncConnectionPool[Any], principal: Principal, *, route: str, action: str
) -> AsyncIterator[ScopedTransaction]:
    """A transaction scoped to ``principal``; its audit records commit with it.

    ``action`` names the request in the audit log when it is refused before any record was
    made (e.g. the patient is not visible).
    """
    async with pool.connection() as conn, conn.pipeline():
        try:
            async with conn.transaction():
                await _set_acting_user(conn, principal)
                scope = ScopedTransaction(conn, principal, route)
                yield scope
                await _write_audit(conn, principal, route, scope.records, "success")
        except NotVisibleError as refusal:
            # The request's transaction is gone; record the refused attempt on its own.
            async with conn.transaction():
                await _set_acting_user(conn, principal)
                await _write_audit(
                    conn,
                    principal,
                    route,
                    [_AuditRecord(action, refusal.patient_id, {})],
                    "not_found",
                )
            log.warning(
                "refused: %s",
                refusal,
                extra={"subject": principal.subject, "route": route, "action": action},
            )
            raise


async def audited_read(
    pool: AsyncConnectionPool[Any],
    principal: Principal,
    *,
    route: str,
    action: str,
    patient_id: uuid.UUID,
    query: str,
    params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``query``, one statement that reads ``patient_id``'s data and writes the read's audit
    record itself (outcome success, or not_found and no rows when the patient is not visible),
    scoped to ``principal``, in one round trip: BEGIN, the acting user, the statement and the
    COMMIT go out together. Raises NotVisibleError (after the commit) when nothing came back.

    The statement gets ``params`` and the audit fields: subject, role, route, action and
    patient_id.
    """
    arguments = {
        **(params or {}),
        "subject": principal.subject,
        "role": principal.audit_role,
        "route": route,
        "action": action,
        "patient_id": patient_id,
    }
    async with (
        pool.connection() as conn,
        conn.pipeline(),
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        async with conn.transaction():
            await _set_acting_user(conn, principal)
            await cursor.execute(query, arguments)
        # The results arrived with the COMMIT's answer.
        rows: list[dict[str, Any]] = await cursor.fetchall()
    if not rows:
        log.warning(
            "refused: patient not found",
            extra={"subject": principal.subject, "route": route, "action": action},
        )
        raise NotVisibleError("patient", patient_id=patient_id)
    return rows


async def check_api_role(pool: AsyncConnectionPool[Any]) -> None:
    """Refuse to serve if the API's role is a superuser, bypasses RLS, or owns the tables."""
    async with pool.connection() as conn:
        cursor = await conn.execute(_Q["role_safety"])
        row = await cursor.fetchone()
    if row is None:
        raise UnsafeApiRoleError("cannot read the API role's attributes")
    superuser, bypass_rls, owns_tables = row
    if superuser or bypass_rls or owns_tables:
        raise UnsafeApiRoleError(
            "the clinician API must connect as a role that is not a superuser, has no "
            "BYPASSRLS and owns no rpmstore table (row-level security would not apply): "
            "set API_DATABASE_URL to the rpmstore_api role"
        )
