"""The two kinds of lock a run takes, and the retry that keeps ingest from waiting behind them.

* a session advisory lock per table: one rechunk process per table at a time;
* short ACCESS EXCLUSIVE locks on the live table (prepare, cutover, rollback, finalize), each
  under a transaction-local ``lock_timeout`` and retried with back-off, so ingest never queues
  behind one for longer than that timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg import sql

from jobs.rechunk.catalog import q
from jobs.rechunk.errors import LockBusyError, RechunkRefusedError
from jobs.rechunk.model import Options
from schema.errors import is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

# Waiting this long for the per-table advisory lock lets a just-killed process's backend end.
_TABLE_LOCK_WAIT = "10s"
_FIRST_DELAY_S = 0.1
_MAX_DELAY_S = 5.0


class Locks:
    """Locks on one autocommit connection, with the run's timeout and attempts."""

    def __init__(self, conn: psycopg.Connection, options: Options) -> None:
        self._conn = conn
        self._options = options

    def with_retries(self, step: Callable[[], T]) -> T:
        """Run a step that needs a short strong lock on the live table; on lock_timeout (or any
        other transient error), back off and try again, so ingest never waits behind it for more
        than lock_timeout."""
        delay = _FIRST_DELAY_S
        for attempt in range(1, self._options.lock_attempts + 1):
            try:
                return step()
            except psycopg.Error as exc:
                # The project's one transient-error policy (lock timeouts, deadlocks,
                # serialization failures...); a lost connection is transient too, but this
                # run cannot go on without its session locks, so it ends the run.
                if not is_transient(exc) or self._conn.broken:
                    raise
                log.warning(
                    "lock not granted, retrying",
                    extra={"attempt": attempt, "sqlstate": exc.sqlstate, "delay_s": delay},
                )
                time.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY_S)
        raise LockBusyError(
            f"could not get a {self._options.lock_timeout_s:g}s lock on the table in "
            f"{self._options.lock_attempts} attempts; the ledger is intact, run again later"
        )

    def lock_timeout(self) -> None:
        """The run's lock_timeout for the rest of the caller's transaction."""
        timeout = f"{round(self._options.lock_timeout_s * 1000)}ms"
        self._conn.execute(q("local_lock_timeout"), {"timeout": timeout})

    def lock(self, *tables: sql.Identifier) -> None:
        """ACCESS EXCLUSIVE on ``tables`` until the caller's transaction ends."""
        self.lock_timeout()
        self._conn.execute(sql.SQL(q("lock_tables")).format(tables=sql.SQL(", ").join(tables)))

    @contextmanager
    def table_lock(self, schema: str, name: str) -> Iterator[None]:
        """One rechunk process per table: refused when another has held it for 10 s."""
        table = f"{schema}.{name}"
        self._conn.execute(q("session_lock_timeout"), {"timeout": _TABLE_LOCK_WAIT})
        try:
            self._conn.execute(q("lock_table_runs"), {"table": table})
        except psycopg.errors.LockNotAvailable:
            raise RechunkRefusedError(f"another rechunk process is working on {table}") from None
        finally:
            self._conn.execute(q("session_lock_timeout"), {"timeout": "0"})
        try:
            yield
        finally:
            self._conn.execute(q("unlock_table_runs"), {"table": table})
