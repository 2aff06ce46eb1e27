"""Retention policies and the hypertables they name, resolved against the live catalogue."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from schema.sql import queries

log = logging.getLogger(__name__)

Q = queries("retention")

# The raw readings table: the one whose held patients' rows are copied to rpm.held_readings.
READINGS = ("rpm", "readings")


@dataclass(frozen=True)
class Policy:
    policy_id: int
    target_schema: str
    target_table: str
    metric_class: str | None  # None: the table's default
    keep: timedelta
    kind: str  # 'raw' or 'rollup'
    requires_rollups: bool

    @property
    def target(self) -> str:
        return f"{self.target_schema}.{self.target_table}"


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # format_type() text, e.g. 'timestamp with time zone'


@dataclass(frozen=True)
class Target:
    """A hypertable (or continuous aggregate) with its policies."""

    schema: str
    table: str
    chunk_schema_table: tuple[str, str]  # the hypertable that holds the chunks
    time_column: str
    columns: tuple[Column, ...]
    policies: tuple[Policy, ...]  # default first, then per class

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def relation(self) -> sql.Identifier:
        """What drop_chunks and restores address (the aggregate view for a continuous aggregate)."""
        return sql.Identifier(self.schema, self.table)

    @property
    def storage(self) -> sql.Identifier:
        """Where the rows are read from (the materialization hypertable for an aggregate)."""
        return sql.Identifier(*self.chunk_schema_table)

    @property
    def kind(self) -> str:
        return self.policies[0].kind

    @property
    def requires_rollups(self) -> bool:
        return any(p.requires_rollups for p in self.policies)

    @property
    def has_patients(self) -> bool:
        return any(c.name == "patient_id" for c in self.columns)

    @property
    def has_metrics(self) -> bool:
        return any(c.name == "metric_id" for c in self.columns)

    @property
    def is_readings(self) -> bool:
        return (self.schema, self.table) == READINGS

    @property
    def longest_keep(self) -> timedelta:
        """Chunks are dropped at the longest period of any class: they hold every metric."""
        return max(p.keep for p in self.policies)


@dataclass(frozen=True)
class ResolvedPolicies:
    targets: tuple[Target, ...]
    notes: tuple[str, ...]  # targets skipped, and why
    metric_classes: dict[str, tuple[int, ...]]
    all_metric_ids: tuple[int, ...]


def load_policies(conn: psycopg.Connection) -> list[Policy]:
    return [Policy(*row) for row in conn.execute(Q["policies"]).fetchall()]


def resolve(conn: psycopg.Connection) -> ResolvedPolicies:
    """Group enabled policies by table and keep the tables that exist as hypertables."""
    by_table: dict[tuple[str, str], list[Policy]] = {}
    for policy in load_policies(conn):
        by_table.setdefault((policy.target_schema, policy.target_table), []).append(policy)
    targets: list[Target] = []
    notes: list[str] = []
    for (schema, table), policies in by_table.items():
        target, note = _resolve_one(conn, schema, table, policies)
        if target is None:
            notes.append(note)
            log.debug(
                "retention target skipped", extra={"target": f"{schema}.{table}", "why": note}
            )
            continue
        targets.append(target)
    classes = {name: tuple(ids) for name, ids in conn.execute(Q["metric_classes"]).fetchall()}
    all_ids = conn.execute(Q["all_metric_ids"]).fetchone()
    return ResolvedPolicies(
        targets=tuple(targets),
        notes=tuple(notes),
        metric_classes=classes,
        all_metric_ids=tuple(all_ids[0] or ()) if all_ids else (),
    )


def _resolve_one(
    conn: psycopg.Connection, schema: str, table: str, policies: list[Policy]
) -> tuple[Target | None, str]:
    name = f"{schema}.{table}"
    found = conn.execute(Q["resolve_target"], {"schema": schema, "table": table}).fetchone()
    if found is None:
        exists = conn.execute(Q["relation_exists"], {"schema": schema, "table": table}).fetchone()
        if exists and exists[0]:
            return None, f"{name}: not a hypertable or continuous aggregate (no chunks to drop)"
        return None, f"{name}: does not exist in this database (policy kept for when it does)"
    store_schema, store_table = str(found[0]), str(found[1])
    dimension = conn.execute(
        Q["time_dimension"], {"schema": store_schema, "table": store_table}
    ).fetchone()
    if dimension is None or dimension[1] != "timestamp with time zone":
        return None, f"{name}: time dimension is not timestamptz (not supported)"
    columns = tuple(
        Column(str(n), str(t))
        for n, t in conn.execute(Q["columns"], {"schema": store_schema, "table": store_table})
    )
    ordered = sorted(policies, key=lambda p: (p.metric_class is not None, p.metric_class or ""))
    if ordered[0].metric_class is not None:
        return None, f"{name}: has class policies but no default policy (metric_class NULL)"
    if len(ordered) > 1 and not any(c.name == "metric_id" for c in columns):
        return None, f"{name}: metric-class policies need a metric_id column"
    return (
        Target(
            schema=schema,
            table=table,
            chunk_schema_table=(store_schema, store_table),
            time_column=str(dimension[0]),
            columns=columns,
            policies=tuple(ordered),
        ),
        "",
    )
