"""Step 1, prepare: in one short transaction, the run row, the new table (a faithful copy
built from the catalogues under a temporary name), the dual write and guards on the live
table, and the list of source chunks. Rows committed before it are copied; rows after it are
dual-written."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql

from jobs.rechunk import ddl
from jobs.rechunk.catalog import (
    Dimension,
    TableDefinition,
    check_partitioning,
    continuous_aggregates,
    q,
    refuse_dependents,
    refuse_unwritable_catalogue,
)
from jobs.rechunk.errors import RechunkRefusedError
from jobs.rechunk.ledger import Ledger
from jobs.rechunk.locking import Locks
from jobs.rechunk.mirror import install_guard, install_mirror
from jobs.rechunk.model import Kind, Run, identifier

log = logging.getLogger(__name__)


def check(conn: psycopg.Connection, table: TableDefinition, target: Sequence[Dimension]) -> None:
    """Refuse, before anything is written, a migration that cannot or need not be done."""
    if table.compressed:
        raise RechunkRefusedError(
            f"{table.qualified} has compression enabled: decompress and disable it first"
        )
    if tuple(target) == table.dimensions:
        raise RechunkRefusedError(
            f"{table.qualified} already has "
            f"{', '.join(d.describe() for d in table.dimensions)}: nothing to do"
        )
    refuse_dependents(conn, table)
    with conn.transaction():
        refuse_unwritable_catalogue(conn, table, continuous_aggregates(conn, table))
    check_partitioning(table, target)


def prepare(
    conn: psycopg.Connection,
    *,
    locks: Locks,
    ledger: Ledger,
    table: TableDefinition,
    kind: Kind,
    target: Sequence[Dimension],
) -> Run:
    """Open a run: everything in one transaction, so a failure leaves nothing behind; retried
    while the live table's lock is busy."""
    return locks.with_retries(
        lambda: _prepare_once(
            conn, locks=locks, ledger=ledger, table=table, kind=kind, target=target
        )
    )


def _prepare_once(
    conn: psycopg.Connection,
    *,
    locks: Locks,
    ledger: Ledger,
    table: TableDefinition,
    kind: Kind,
    target: Sequence[Dimension],
) -> Run:
    with conn.transaction():
        locks.lock_timeout()
        run = ledger.open_run(table, kind, target)
        names = run.names
        source = identifier(table.schema, table.name)
        shadow = identifier(table.schema, names.shadow(table.name))
        _create_shadow(conn, table, shadow, target, names)
        # Last: these take the live table's lock (and each chunk's) until COMMIT.
        install_mirror(
            conn, table, on=source, into=shadow, function_name=names.to_new_function, names=names
        )
        install_guard(
            conn,
            on=source,
            names=names,
            message=f"{table.qualified} is being migrated (run {run.run_id})",
        )
        ledger.add_chunks(table, run)
    log.info(
        "prepared",
        extra={
            "run_id": run.run_id,
            "table": table.qualified,
            "shadow": names.shadow(table.name),
            "target": [d.describe() for d in target],
        },
    )
    return run


def _create_shadow(
    conn: psycopg.Connection,
    table: TableDefinition,
    shadow: sql.Identifier,
    target: Sequence[Dimension],
    names: ddl.Names,
) -> None:
    """The new table: the live one's definition, the target dimensions, the run's names."""
    for statement in ddl.create_table(table, shadow):
        conn.execute(statement)
    shadow_text = _qualified(conn, table.schema, names.shadow(table.name))
    first, *others = target
    conn.execute(
        q("create_hypertable"),
        {"table": shadow_text, "column": first.column, "interval": first.interval},
    )
    for dimension in others:
        conn.execute(
            q("add_hash_dimension"),
            {
                "table": shadow_text,
                "column": dimension.column,
                "partitions": dimension.partitions,
            },
        )
    source_text = _qualified(conn, table.schema, table.name)
    for statement in ddl.create_indexes(table, source_text, shadow, names):
        conn.execute(statement)
    for statement in ddl.access(table, shadow, _current_user(conn)):
        conn.execute(statement)


def _qualified(conn: psycopg.Connection, schema: str, name: str) -> str:
    row = conn.execute(q("qualified_name"), {"schema": schema, "name": name}).fetchone()
    assert row is not None
    return str(row[0])


def _current_user(conn: psycopg.Connection) -> str:
    row = conn.execute(q("current_user"), {}).fetchone()
    assert row is not None
    return str(row[0])
