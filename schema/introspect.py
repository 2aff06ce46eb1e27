"""A comparable description of rpmstore's schemas, read from the catalogues."""

from __future__ import annotations

import psycopg

from schema.sql import queries

SCHEMAS = ("rpm", "rpm_meta")
_REFERENCE_PREFIX = "reference_"
# Reference-data queries name rpm tables, so they only run once the rpm schema exists.
HAS_RPM_SCHEMA = "SELECT to_regnamespace('rpm') IS NOT NULL"


def describe(conn: psycopg.Connection) -> dict[str, list[tuple[str, ...]]]:
    """Every catalogue aspect of the rpm schemas (and the seeded reference data), as text rows."""
    has_rpm = conn.execute(HAS_RPM_SCHEMA).fetchone()
    description: dict[str, list[tuple[str, ...]]] = {}
    for name, statement in queries("introspect").items():
        if name.startswith(_REFERENCE_PREFIX) and not (has_rpm and has_rpm[0]):
            continue
        rows = conn.execute(statement, {"schemas": list(SCHEMAS)}).fetchall()
        description[name] = [tuple(str(value) for value in row) for row in rows]
    return description
