"""Acknowledging and resolving alerts on behalf of a person (the clinician API calls these).

The caller owns the transaction (and writes the audit record in it); these functions run the
named statements of ``schema/queries/alert_lifecycle.sql`` on the caller's connection.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from schema.sql import queries


class AlertNotFoundError(LookupError):
    """No such alert (or not visible to the caller)."""


class IllegalAlertTransitionError(ValueError):
    """The alert exists but its status does not allow the transition (e.g. ack a resolved one)."""

    def __init__(self, alert_id: uuid.UUID, status: str, to_status: str) -> None:
        super().__init__(f"alert {alert_id} is {status}; it cannot become {to_status}")
        self.status = status
        self.to_status = to_status


async def acknowledge_alert(
    conn: psycopg.AsyncConnection[Any], *, alert_id: uuid.UUID, actor: str, note: str | None = None
) -> dict[str, Any]:
    """open -> acknowledged; returns the alert row (with ``from_status``)."""
    return await _transition(conn, "ack_alert", "acknowledged", alert_id, actor, note)


async def resolve_alert(
    conn: psycopg.AsyncConnection[Any], *, alert_id: uuid.UUID, actor: str, note: str | None = None
) -> dict[str, Any]:
    """open or acknowledged -> resolved (manually); returns the alert row."""
    return await _transition(conn, "resolve_alert", "resolved", alert_id, actor, note)


async def _transition(
    conn: psycopg.AsyncConnection[Any],
    query: str,
    to_status: str,
    alert_id: uuid.UUID,
    actor: str,
    note: str | None,
) -> dict[str, Any]:
    q = queries("alert_lifecycle")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q[query], {"alert_id": alert_id, "actor": actor, "note": note})
        row = await cur.fetchone()
        if row is not None:
            return row
        await cur.execute(q["alert_status"], {"alert_id": alert_id})
        current = await cur.fetchone()
    if current is None:
        raise AlertNotFoundError(str(alert_id))
    raise IllegalAlertTransitionError(alert_id, str(current["status"]), to_status)
