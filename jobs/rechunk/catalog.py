"""What a hypertable is, read from the catalogues, so a faithful copy can be built from it.

Nothing here hard-codes today's DDL of rpm.readings: columns, defaults, constraints, indexes,
grants, row-level security, policies, triggers, comments and dimensions are whatever the
catalogues say at the time of the run, so objects other migrations add later come along.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from jobs.rechunk.errors import RechunkRefusedError
from schema.sql import queries


def q(name: str) -> str:
    return queries("rechunk")[name]


@dataclass(frozen=True)
class Dimension:
    column: str
    kind: str  # 'time' or 'hash'
    interval: str | None = None  # time dimensions: an interval as PostgreSQL prints it
    partitions: int | None = None  # hash dimensions

    def as_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "interval": self.interval,
            "partitions": self.partitions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dimension:
        return cls(data["column"], data["kind"], data.get("interval"), data.get("partitions"))

    def describe(self) -> str:
        if self.kind == "time":
            return f"{self.column} every {self.interval}"
        return f"hash({self.column}) into {self.partitions}"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    default: str | None
    generated: str  # '' or 's' (stored)
    identity: str  # '' or 'a' / 'd'
    collation: tuple[str, str] | None  # (schema, name) when not the type's default
    statistics: int | None
    compression: str | None
    storage: str | None  # when not the type's default
    comment: str | None
    hashable: bool  # the type has a default hash operator class


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str  # c, u, p, x, f
    definition: str
    index_backed: bool
    comment: str | None


@dataclass(frozen=True)
class Index:
    name: str
    definition: str
    unique: bool
    columns: tuple[str, ...]
    comment: str | None
    constraint_backed: bool


@dataclass(frozen=True)
class Trigger:
    name: str
    definition: str
    comment: str | None


@dataclass(frozen=True)
class Policy:
    name: str
    permissive: bool
    command: str  # r, a, w, d, *
    roles: tuple[str, ...]  # '' is PUBLIC
    using: str | None
    with_check: str | None
    comment: str | None


@dataclass(frozen=True)
class Grant:
    grantee: str  # '' is PUBLIC
    privilege: str
    grantable: bool
    column: str | None = None


@dataclass(frozen=True)
class TableDefinition:
    schema: str
    name: str
    oid: int
    hypertable_id: int
    owner: str
    row_security: bool
    force_row_security: bool
    options: tuple[str, ...]
    replica_identity: str
    comment: str | None
    compressed: bool
    dimensions: tuple[Dimension, ...]
    columns: tuple[Column, ...]
    constraints: tuple[Constraint, ...]
    indexes: tuple[Index, ...]
    triggers: tuple[Trigger, ...]
    policies: tuple[Policy, ...]
    grants: tuple[Grant, ...]
    owned_sequences: tuple[tuple[str, str], ...]  # (sequence, column)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def copy_columns(self) -> tuple[str, ...]:
        """Columns a copy writes (generated columns are computed again by the new table)."""
        return tuple(c.name for c in self.columns if c.generated == "")

    @property
    def time_dimension(self) -> Dimension:
        return self.dimensions[0]

    def unique_column_sets(self) -> list[tuple[str, tuple[str, ...]]]:
        sets = [(i.name, i.columns) for i in self.indexes if i.unique]
        return sets


@dataclass(frozen=True)
class SourceChunk:
    name: str  # schema-qualified, quoted as needed
    range_start: datetime | None
    range_end: datetime | None
    predicate: str


@contextmanager
def _qualified_names(conn: psycopg.Connection) -> Iterator[None]:
    """Deparsed names (pg_get_indexdef, pg_get_triggerdef, pg_get_expr, pg_get_viewdef) are
    schema-qualified only when not visible; with pg_catalog alone on the search path they
    always are. Inside the caller's transaction."""
    row = conn.execute(q("search_path"), {}).fetchone()
    assert row is not None
    conn.execute(q("set_search_path"), {"search_path": "pg_catalog"})
    try:
        yield
    finally:
        conn.execute(q("set_search_path"), {"search_path": row[0]})


def read_definition(conn: psycopg.Connection, schema: str, name: str) -> TableDefinition:
    """The whole definition of hypertable ``schema.name`` (inside the caller's transaction)."""
    with _qualified_names(conn):
        return _read_definition(conn, schema, name)


@dataclass(frozen=True)
class View:
    name: str  # schema-qualified, as the catalogue prints it
    definition: str
    options: tuple[str, ...]


def dependent_views(conn: psycopg.Connection, table: TableDefinition) -> list[View]:
    """Plain views selecting from the table, to be re-pointed by a swap."""
    with _qualified_names(conn):
        rows = conn.execute(q("dependent_views"), {"oid": table.oid}).fetchall()
    return [View(r[0], r[1].strip().rstrip(";"), tuple(r[2] or ())) for r in rows]


@dataclass(frozen=True)
class ContinuousAggregates:
    """The continuous aggregates built directly on a hypertable (TSL edition), as a swap moves
    them to the table taking the live name: their views (partial, direct, user, per aggregate)
    and TimescaleDB's invalidation trigger function, when the table has the trigger."""

    names: tuple[str, ...]  # user views, schema-qualified
    views: tuple[View, ...]
    trigger_function: str | None

    def __bool__(self) -> bool:
        return bool(self.names)


def continuous_aggregates(conn: psycopg.Connection, table: TableDefinition) -> ContinuousAggregates:
    """What a swap must carry over of the aggregates on ``table`` (inside the caller's
    transaction; deparsed like :func:`dependent_views`)."""
    with _qualified_names(conn):
        rows = conn.execute(
            q("continuous_aggregate_views"), {"hypertable_id": table.hypertable_id}
        ).fetchall()
        trigger = conn.execute(q("invalidation_trigger"), {"oid": table.oid}).fetchone()
    names = tuple(dict.fromkeys(str(r[0]) for r in rows))
    views = tuple(View(r[1], r[2].strip().rstrip(";"), tuple(r[3] or ())) for r in rows)
    return ContinuousAggregates(names, views, str(trigger[0]) if trigger else None)


def hypertable_id(conn: psycopg.Connection, schema: str, name: str) -> int:
    row = conn.execute(q("hypertable"), {"schema": schema, "name": name}).fetchone()
    if row is None:
        raise RechunkRefusedError(f"{schema}.{name} is not a hypertable")
    return int(row[1])


def refuse_unwritable_catalogue(
    conn: psycopg.Connection, table: TableDefinition, aggregates: ContinuousAggregates
) -> None:
    """Moving aggregates writes TimescaleDB's catalogue: say so before anything is done."""
    if not aggregates:
        return
    row = conn.execute(q("catalogue_writable"), {}).fetchone()
    if row is None or not row[0]:
        raise RechunkRefusedError(
            f"{table.qualified} has continuous aggregates ({', '.join(aggregates.names)}): the "
            f"cutover moves them to the new table by updating TimescaleDB's catalogue, which "
            f"only its owner may write. Run the re-chunk as a superuser (DATABASE_URL)"
        )


def _read_definition(conn: psycopg.Connection, schema: str, name: str) -> TableDefinition:
    row = conn.execute(q("hypertable"), {"schema": schema, "name": name}).fetchone()
    if row is None:
        raise RechunkRefusedError(f"{schema}.{name} is not a hypertable")
    oid, hypertable_id = int(row[0]), int(row[1])
    params = {"oid": oid, "schema": schema, "name": name}
    dimension_rows = conn.execute(q("dimensions"), params).fetchall()
    if not dimension_rows or dimension_rows[0][1] != "timestamp with time zone":
        raise RechunkRefusedError(
            f"{schema}.{name}: only hypertables partitioned by a timestamptz column are supported"
        )
    dims = tuple(
        Dimension(column, "time", str(interval) if interval is not None else None, None)
        if kind == "Time"
        else Dimension(column, "hash", None, int(partitions))
        for column, _type, kind, interval, partitions in dimension_rows
    )
    columns = tuple(
        Column(
            name=r[0],
            type=r[1],
            not_null=r[2],
            default=r[3],
            generated=r[4],
            identity=r[5],
            collation=(r[7], r[6]) if r[6] is not None else None,
            statistics=r[8] if r[8] is not None and r[8] >= 0 else None,
            compression=r[9],
            storage=r[10],
            comment=r[11],
            hashable=r[12],
        )
        for r in conn.execute(q("columns"), params)
    )
    constraints = tuple(Constraint(*r) for r in conn.execute(q("constraints"), params))
    indexes = tuple(
        Index(r[0], r[1], r[2], tuple(r[3]), r[4], r[5]) for r in conn.execute(q("indexes"), params)
    )
    triggers = tuple(Trigger(*r) for r in conn.execute(q("triggers"), params))
    policies = tuple(
        Policy(r[0], r[1], r[2], tuple(r[3]), r[4], r[5], r[6])
        for r in conn.execute(q("policies"), params)
    )
    grants = tuple(Grant(*r) for r in conn.execute(q("table_grants"), params)) + tuple(
        Grant(r[1], r[2], r[3], column=r[0]) for r in conn.execute(q("column_grants"), params)
    )
    return TableDefinition(
        schema=schema,
        name=name,
        oid=oid,
        hypertable_id=hypertable_id,
        owner=row[2],
        row_security=row[3],
        force_row_security=row[4],
        options=tuple(row[5] or ()),
        replica_identity=row[6],
        comment=row[7],
        compressed=row[8],
        dimensions=dims,
        columns=columns,
        constraints=constraints,
        indexes=indexes,
        triggers=triggers,
        policies=policies,
        grants=grants,
        owned_sequences=tuple(
            (str(r[0]), str(r[1])) for r in conn.execute(q("owned_sequences"), params)
        ),
    )


def dependents(conn: psycopg.Connection, table: TableDefinition) -> list[tuple[str, str]]:
    """(kind, name) of every object that would keep pointing at the old table after a swap."""
    params = {"oid": table.oid, "hypertable_id": table.hypertable_id}
    return [(str(kind), str(name)) for kind, name in conn.execute(q("dependents"), params)]


def refuse_dependents(conn: psycopg.Connection, table: TableDefinition) -> None:
    found = dependents(conn, table)
    if found:
        listed = "; ".join(f"{kind} {name}" for kind, name in found)
        raise RechunkRefusedError(
            f"{table.qualified} cannot be swapped for a re-chunked copy: these objects refer to "
            f"it by oid and would silently keep using the old table: {listed}. Drop them before "
            f"the migration and create them again after 'rechunk finalize' (continuous "
            f"aggregates: recreate and refresh; jobs: add the policy again)"
        )


def source_chunks(conn: psycopg.Connection, table: TableDefinition) -> list[SourceChunk]:
    rows = conn.execute(q("chunks"), {"hypertable_id": table.hypertable_id}).fetchall()
    return [SourceChunk(r[0], r[1], r[2], r[3] or "true") for r in rows]


def check_partitioning(table: TableDefinition, target: Sequence[Dimension]) -> None:
    """TimescaleDB needs every partitioning column in every unique index: say so up front."""
    columns = {d.column for d in target}
    for index_name, covered in table.unique_column_sets():
        missing = sorted(columns - set(covered))
        if missing:
            raise RechunkRefusedError(
                f"cannot partition {table.qualified} by {', '.join(missing)}: the unique index "
                f"{index_name} ({', '.join(covered)}) does not contain it, and TimescaleDB "
                f"requires every partitioning column in every unique index. Partition by a "
                f"column of that key instead"
            )
