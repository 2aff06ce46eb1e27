"""Step 5 and its undoing: the transactions that change which table carries the live name,
and those that end a run by dropping the table no longer needed.

``swap("cutover")`` puts the new table live and keeps the old one, mirrored, for rollback;
``swap("back")`` undoes that exactly. Each step here is one transaction under a short ACCESS
EXCLUSIVE lock on the live table, retried by :meth:`Locks.with_retries` while it is busy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import psycopg
from psycopg import sql

from jobs.rechunk import ddl
from jobs.rechunk.catalog import (
    ContinuousAggregates,
    TableDefinition,
    continuous_aggregates,
    dependent_views,
    hypertable_id,
    q,
    read_definition,
    refuse_dependents,
    refuse_unwritable_catalogue,
)
from jobs.rechunk.ledger import Ledger
from jobs.rechunk.locking import Locks
from jobs.rechunk.mirror import drop_mirror_function, drop_triggers, install_guard, install_mirror
from jobs.rechunk.model import Run, identifier

Direction = Literal["cutover", "back"]

log = logging.getLogger(__name__)


class Swaps:
    """The run-ending transactions on one connection, each retried while its lock is busy."""

    def __init__(self, conn: psycopg.Connection, locks: Locks, ledger: Ledger) -> None:
        self._conn = conn
        self._locks = locks
        self._ledger = ledger

    def swap(self, schema: str, name: str, run: Run, direction: Direction) -> None:
        """Give the live name to the new table ("cutover") or back to the old one ("back")."""
        self._locks.with_retries(lambda: self._swap(schema, name, run, direction))

    def abandon(self, schema: str, name: str, run: Run) -> None:
        """Before cutover: drop the dual write and the new table; the live table never changed."""
        names = run.names
        self._locks.with_retries(
            lambda: self._drop(
                schema,
                name,
                run,
                table_name=names.shadow(name),
                function_name=names.to_new_function,
                # The way out of any run left half done: it does not insist on the function.
                function_if_exists=True,
                state="rolled_back",
            )
        )

    def drop_retired(self, schema: str, name: str, run: Run) -> None:
        """After cutover: drop the mirror into the old table, then the old table (no way back)."""
        names = run.names
        self._locks.with_retries(
            lambda: self._drop(
                schema,
                name,
                run,
                table_name=names.retired(name),
                function_name=names.to_old_function,
                function_if_exists=False,
                state="finalized",
            )
        )

    def _swap(self, schema: str, name: str, run: Run, direction: Direction) -> None:
        # The table going live carries the run's shadow name (cutover) or retired name (back);
        # the live one takes the other of the two.
        conn = self._conn
        names = run.names
        forward = direction == "cutover"
        incoming, outgoing = (
            (names.shadow, names.retired) if forward else (names.retired, names.shadow)
        )
        live = identifier(schema, name)
        with conn.transaction():
            self._locks.lock_timeout()
            _lock_views(conn, schema, name)
            self._locks.lock(live, identifier(schema, incoming(name)))
            # Read again under the lock: what the table going live must look like.
            table = read_definition(conn, schema, name)
            refuse_dependents(conn, table)
            views = dependent_views(conn, table)
            aggregates = continuous_aggregates(conn, table)
            refuse_unwritable_catalogue(conn, table, aggregates)
            drop_triggers(conn, on=live, names=names)
            # The dual write into the table going live stops: it is the live one now.
            drop_mirror_function(
                conn, schema, names.to_new_function if forward else names.to_old_function
            )
            _rename(conn, table, old=_same, new=outgoing)
            _rename(conn, table, old=incoming, new=_same)
            # From here `live` names the table that went live, `kept` the one it replaced.
            kept = identifier(schema, outgoing(name))
            for statement in (
                *ddl.own_sequences(table, live),
                # Row-level security was never taken off the old table; its triggers were.
                *ddl.at_cutover(table, live, security=forward),
                *ddl.replace_views(views),
            ):
                conn.execute(statement)
            _move_aggregates(conn, aggregates, table, live=live, kept=kept)
            if forward:
                for statement in ddl.drop_user_triggers(table, kept):
                    conn.execute(statement)
                install_mirror(
                    conn,
                    table,
                    on=live,
                    into=kept,
                    function_name=names.to_old_function,
                    names=names,
                )
                install_guard(
                    conn,
                    on=live,
                    names=names,
                    message=f"{table.qualified} was migrated by run {run.run_id} and the old "
                    f"table is kept for rollback",
                )
                self._ledger.set_state(run, "cut_over")
            else:
                # Every row the new table received after the cutover was mirrored into the old.
                conn.execute(sql.SQL(q("drop_table")).format(table=kept))
                self._ledger.set_state(run, "rolled_back")

    def _drop(
        self,
        schema: str,
        name: str,
        run: Run,
        *,
        table_name: str,
        function_name: str,
        function_if_exists: bool,
        state: str,
    ) -> None:
        """End the dual write into ``table_name`` and drop it, in one transaction."""
        live = identifier(schema, name)
        dropped = identifier(schema, table_name)
        with self._conn.transaction():
            self._locks.lock(live, dropped)
            drop_triggers(self._conn, on=live, names=run.names)
            drop_mirror_function(self._conn, schema, function_name, if_exists=function_if_exists)
            self._conn.execute(sql.SQL(q("drop_table")).format(table=dropped))
            self._ledger.set_state(run, state)


def _lock_views(conn: psycopg.Connection, schema: str, name: str) -> None:
    """Before the tables: an exclusive lock on each view the swap will replace, and on nothing
    else. A query on a view locks the view, then the tables under it; a swap that locked the
    live table first and then replaced a view would deadlock with a query caught in between
    (and the deadlock detector would often fail the reader). ``LOCK`` on a view would also lock
    the tables under it, one view after another, which is the same trap; replacing a view with
    its own definition, before the renames, locks just the view and changes nothing."""
    table = read_definition(conn, schema, name)
    views = dependent_views(conn, table) + list(continuous_aggregates(conn, table).views)
    for statement in ddl.replace_views(views):
        conn.execute(statement)


def _move_aggregates(
    conn: psycopg.Connection,
    aggregates: ContinuousAggregates,
    table: TableDefinition,
    *,
    live: sql.Identifier,
    kept: sql.Identifier,
) -> None:
    """The continuous aggregates on the table that had the live name follow the name (after
    the renames, in the swap's transaction).

    Design (chosen over rebuilding the aggregates on the new table and copying their
    materialized rows, and over rewriting the hypertable in place): an aggregate reaches its
    raw hypertable only through the oid in its three views and the raw hypertable id, in
    TimescaleDB's catalogue (the aggregate's row, the invalidation threshold, unprocessed raw
    invalidations) and in the invalidation trigger on the table. The views are replaced with
    their own definitions, which now resolve the live name to the incoming table (as plain
    views are); the raw-keyed catalogue rows and the trigger move with them. The materialization
    hypertables, their watermarks, refresh policies and the aggregates built on aggregates are
    not touched: rolled-up history, including buckets whose raw rows retention has dropped, is
    never copied, recomputed or at risk, and the swap stays a catalogue-only transaction of
    constant size. Both directions are the same code, so a rollback moves them back exactly. The
    price is a superuser for the run (TimescaleDB offers no public API for it): see
    ``schema/queries/rechunk.sql`` (the named catalogue statements) and its test.
    """
    if not aggregates:
        return
    for statement in ddl.replace_views(list(aggregates.views)):
        conn.execute(statement)
    ids = {
        "from_id": table.hypertable_id,
        "to_id": hypertable_id(conn, table.schema, table.name),
    }
    for block in (
        "repoint_continuous_aggregates",
        "forget_invalidation_threshold",
        "move_invalidation_threshold",
        "move_invalidation_log",
    ):
        conn.execute(q(block), ids)
    for statement in ddl.move_invalidation_trigger(
        aggregates.trigger_function, outgoing=kept, incoming=live, hypertable_id=ids["to_id"]
    ):
        conn.execute(statement)
    log.info(
        "continuous aggregates moved",
        extra={
            "table": table.qualified,
            "aggregates": list(aggregates.names),
            "from_hypertable_id": ids["from_id"],
            "to_hypertable_id": ids["to_id"],
            "invalidation_trigger": aggregates.trigger_function is not None,
        },
    )


def _same(name: str) -> str:
    return name


def _rename(
    conn: psycopg.Connection,
    table: TableDefinition,
    *,
    old: Callable[[str], str],
    new: Callable[[str], str],
) -> None:
    """Rename a table, its indexes and its index-backed constraints from old(x) to new(x), x
    being the live table's name for each: the two tables of a run trade names this way."""
    schema = table.schema
    on = identifier(schema, old(table.name))
    for constraint in table.constraints:
        if constraint.index_backed:
            conn.execute(
                sql.SQL(q("rename_constraint")).format(
                    table=on,
                    old_name=sql.Identifier(old(constraint.name)),
                    new_name=sql.Identifier(new(constraint.name)),
                )
            )
    for index in table.indexes:
        if index.constraint_backed:
            continue
        conn.execute(
            sql.SQL(q("rename_index")).format(
                index=identifier(schema, old(index.name)),
                new_name=sql.Identifier(new(index.name)),
            )
        )
    conn.execute(
        sql.SQL(q("rename_table")).format(table=on, new_name=sql.Identifier(new(table.name)))
    )
