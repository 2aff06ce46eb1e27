"""The values a run is made of: its options, its ledger row, and the report it returns."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from psycopg import sql

from jobs.rechunk import ddl
from jobs.rechunk.catalog import Dimension

Kind = Literal["rechunk", "repartition"]


@dataclass(frozen=True)
class Options:
    batch_rows: int = 50_000
    lock_timeout_s: float = 2.0
    lock_attempts: int = 30
    cutover: bool = True
    # Test hook: called with ("between" | "inside", batches committed so far in this process).
    pause: Callable[[str, int], None] | None = None


@dataclass(frozen=True)
class DayCount:
    day: date
    old_rows: int
    new_rows: int
    difference: int


@dataclass
class RunReport:
    run_id: int
    table: str
    kind: Kind
    target: tuple[Dimension, ...]
    state: str = "copying"
    chunks: int = 0
    copied_rows: int = 0
    batches: int = 0
    verified_chunks: int = 0
    reconciliation: list[DayCount] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A run as the ledger (``rpm.rechunk_runs``) records it."""

    run_id: int
    kind: str
    target: tuple[Dimension, ...]
    state: str

    @property
    def names(self) -> ddl.Names:
        return ddl.Names(self.run_id)


def operator_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def identifier(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)
