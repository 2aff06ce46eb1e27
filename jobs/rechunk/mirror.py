"""The triggers a run puts on the live table: the dual write into the other table, and the
guards refusing UPDATE, DELETE and TRUNCATE while two tables must stay equal."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from jobs.rechunk import ddl
from jobs.rechunk.catalog import TableDefinition, q
from jobs.rechunk.model import identifier

log = logging.getLogger(__name__)


def install_mirror(
    conn: psycopg.Connection,
    table: TableDefinition,
    *,
    on: sql.Identifier,
    into: sql.Identifier,
    function_name: str,
    names: ddl.Names,
) -> None:
    """Every row stored in ``on`` is stored in ``into`` by the same transaction."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.copy_columns)
    parts = {
        "function": identifier(table.schema, function_name),
        "target": into,
        "columns": columns,
        "values": sql.SQL(", ").join(sql.Identifier("new", c) for c in table.copy_columns),
        "trigger": sql.Identifier(names.mirror_trigger),
        "table": on,
    }
    try:
        with conn.transaction():  # a savepoint, for the fallback
            conn.execute(sql.SQL(q("mirror_function")).format(**parts))
            conn.execute(sql.SQL(q("mirror_trigger")).format(**parts))
    except psycopg.errors.FeatureNotSupported:
        log.warning("no transition tables on hypertables here: mirroring row by row")
        conn.execute(sql.SQL(q("mirror_row_function")).format(**parts))
        conn.execute(sql.SQL(q("mirror_row_trigger")).format(**parts))


def install_guard(
    conn: psycopg.Connection, *, on: sql.Identifier, names: ddl.Names, message: str
) -> None:
    """UPDATE, DELETE and TRUNCATE on ``on`` fail with ``message``."""
    for block, trigger in (
        ("guard_row_trigger", names.guard_trigger),
        ("guard_truncate_trigger", names.guard_truncate_trigger),
    ):
        conn.execute(
            # DDL takes no parameters: the message goes in as a quoted literal.
            sql.SQL(q(block)).format(
                trigger=sql.Identifier(trigger), table=on, message=sql.Literal(message)
            )
        )


def drop_triggers(conn: psycopg.Connection, *, on: sql.Identifier, names: ddl.Names) -> None:
    """The run's mirror and guard triggers on ``on``, those that are there."""
    for trigger in (names.mirror_trigger, names.guard_trigger, names.guard_truncate_trigger):
        conn.execute(sql.SQL(q("drop_trigger")).format(trigger=sql.Identifier(trigger), table=on))


def drop_mirror_function(
    conn: psycopg.Connection, schema: str, function_name: str, *, if_exists: bool = False
) -> None:
    block = "drop_function_if_exists" if if_exists else "drop_function"
    conn.execute(sql.SQL(q(block)).format(function=identifier(schema, function_name)))
