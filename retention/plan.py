"""What a retention run would do, computed without changing anything (``rpmstore retention plan``).

Unit of work: a *slice*, one time range of one target. A slice due for drop is every chunk whose
range lies wholly before the table's horizon (with space partitions, several chunks share a
range and are dropped together). A metric class kept for less than its table gives
``delete_rows`` slices: the class's rows before its own horizon in chunks that stay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import psycopg
from psycopg import sql

from retention.archive import SliceSpec, slice_count
from retention.targets import Policy, Q, ResolvedPolicies, Target, resolve
from schema.edition import detect_edition

log = logging.getLogger(__name__)

Action = Literal["drop_chunk", "delete_rows"]


@dataclass(frozen=True)
class SliceWork:
    target: Target
    action: Action
    start: datetime
    end: datetime
    chunks: tuple[str, ...]
    bytes: int  # on disk (chunks dropped); 0 for row deletes (space is reused, not freed)
    row_count: int  # rows that go (archived, then dropped or deleted)
    held_rows: int  # rows of patients under legal hold in the range (kept)
    held_patients: int
    metric_class: str | None = None
    metric_ids: tuple[int, ...] | None = None
    blocked: str | None = None  # why this slice will be skipped

    @property
    def spec(self) -> SliceSpec:
        return SliceSpec(self.target, self.start, self.end, self.metric_ids, (), self.metric_class)


@dataclass(frozen=True)
class Plan:
    as_of: datetime
    slices: tuple[SliceWork, ...]
    notes: tuple[str, ...]
    held_patients: tuple[str, ...]
    horizons: dict[str, datetime] = field(default_factory=dict)  # target -> drop horizon

    @property
    def due(self) -> tuple[SliceWork, ...]:
        return tuple(s for s in self.slices if s.blocked is None)

    @property
    def bytes_freed(self) -> int:
        return sum(s.bytes for s in self.due)


def build_plan(conn: psycopg.Connection, *, as_of: datetime) -> Plan:
    resolved = resolve(conn)
    held = tuple(str(r[0]) for r in conn.execute(Q["active_holds"]).fetchall())
    watermark = rollup_gate(conn, resolved)
    slices: list[SliceWork] = []
    notes = list(resolved.notes)
    horizons: dict[str, datetime] = {}
    for target in resolved.targets:
        horizon = as_of - target.longest_keep
        horizons[target.name] = horizon
        slices.extend(_drop_slices(conn, target, horizon, held, watermark))
        slices.extend(_delete_slices(conn, target, as_of, horizon, held, resolved, watermark))
    if watermark.mode == "none":
        notes.append(
            "no rollup table exists: raw drops check pending rollup invalidations only, "
            "not the refresher's watermark"
        )
    elif watermark.mode == "caggs":
        shown = ", ".join(
            f"{view} {'nothing yet' if at is None else at.isoformat()}"
            for view, at in watermark.watermarks
        )
        notes.append(
            "rollups are continuous aggregates: raw drops wait for pending invalidations and "
            f"for every aggregate's materialization watermark ({shown})"
        )
        if watermark.refresh_from is not None:
            notes.append(
                f"raw rows from {_window_start(watermark.refresh_from)} on stay: the continuous "
                "aggregates' refresh policies recompute their buckets"
            )
    return Plan(as_of, tuple(slices), tuple(notes), held, horizons)


def _drop_slices(
    conn: psycopg.Connection,
    target: Target,
    horizon: datetime,
    held: tuple[str, ...],
    watermark: RollupGate,
) -> list[SliceWork]:
    schema, table = target.chunk_schema_table
    grouped: dict[tuple[datetime, datetime], list[tuple[str, int]]] = {}
    for c_schema, c_name, start, end, size in conn.execute(
        Q["chunks_before"], {"schema": schema, "table": table, "horizon": horizon}
    ):
        grouped.setdefault((start, end), []).append((f"{c_schema}.{c_name}", int(size)))
    work: list[SliceWork] = []
    for (start, end), chunks in grouped.items():
        rows = slice_count(conn, SliceSpec(target, start, end))
        held_rows, held_patients = _held(conn, target, start, end, held)
        blocked = rollups_block(conn, target, start, end, watermark)
        if blocked is None and held_rows and target.kind == "raw" and not target.is_readings:
            blocked = (
                f"legal hold: {held_rows} rows of {held_patients} held patients and no held-rows "
                f"table for {target.name}; the chunk is kept"
            )
        work.append(
            SliceWork(
                target=target,
                action="drop_chunk",
                start=start,
                end=end,
                chunks=tuple(name for name, _ in chunks),
                bytes=sum(size for _, size in chunks),
                row_count=rows,
                held_rows=held_rows,
                held_patients=held_patients,
                blocked=blocked,
            )
        )
    return work


def _delete_slices(
    conn: psycopg.Connection,
    target: Target,
    as_of: datetime,
    drop_horizon: datetime,
    held: tuple[str, ...],
    resolved: ResolvedPolicies,
    watermark: RollupGate,
) -> list[SliceWork]:
    """Row deletes for classes kept for less than the table's longest period."""
    longest = target.longest_keep
    work: list[SliceWork] = []
    for policy in target.policies:
        if policy.keep >= longest:
            continue
        metric_ids = _metric_ids(policy, target, resolved)
        if not metric_ids:
            continue
        class_horizon = as_of - policy.keep
        schema, table = target.chunk_schema_table
        ranges: dict[tuple[datetime, datetime], list[str]] = {}
        for c_schema, c_name, start, end in conn.execute(
            Q["chunks_starting_before"],
            {"schema": schema, "table": table, "horizon": class_horizon},
        ):
            if end <= drop_horizon or start >= class_horizon:
                continue  # dropped whole, or nothing of this class is due yet
            ranges.setdefault((start, min(end, class_horizon)), []).append(f"{c_schema}.{c_name}")
        for (start, end), chunks in sorted(ranges.items()):
            spec = SliceSpec(target, start, end, metric_ids, held, policy.metric_class)
            rows = slice_count(conn, spec)
            if rows == 0:
                continue
            held_rows, held_patients = _held(conn, target, start, end, held, metric_ids)
            work.append(
                SliceWork(
                    target=target,
                    action="delete_rows",
                    start=start,
                    end=end,
                    chunks=tuple(chunks),
                    bytes=0,
                    row_count=rows,
                    held_rows=held_rows,
                    held_patients=held_patients,
                    metric_class=policy.metric_class or "(default)",
                    metric_ids=metric_ids,
                    blocked=rollups_block(conn, target, start, end, watermark),
                )
            )
    return work


def _metric_ids(policy: Policy, target: Target, resolved: ResolvedPolicies) -> tuple[int, ...]:
    if policy.metric_class is not None:
        return resolved.metric_classes.get(policy.metric_class, ())
    # The default policy covers the metrics whose class has no policy of its own on this table.
    own = {p.metric_class for p in target.policies if p.metric_class is not None}
    covered = {m for c in own for m in resolved.metric_classes.get(c, ())}
    return tuple(m for m in resolved.all_metric_ids if m not in covered)


def _held(
    conn: psycopg.Connection,
    target: Target,
    start: datetime,
    end: datetime,
    held: tuple[str, ...],
    metric_ids: tuple[int, ...] | None = None,
) -> tuple[int, int]:
    if not held or not target.has_patients or target.kind != "raw":
        return 0, 0  # holds keep raw readings; rollups follow their own policy
    name = "held_rows_in_slice" if metric_ids is None else "held_rows_of_metrics"
    query = sql.SQL(Q[name]).format(
        relation=target.storage,
        time_column=sql.SQL("t.{}").format(sql.Identifier(target.time_column)),
    )
    params: dict[str, object] = {"start": start, "end": end, "held": list(held)}
    if metric_ids is not None:
        params["metric_ids"] = list(metric_ids)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class RollupGate:
    """How far rollups are complete, as far as this database can tell.

    mode "none": no rollup target exists (nothing to wait for but pending invalidations);
    "tables": rpmstore's own rollup tables (Apache edition) or another rollup hypertable, whose
    refresher records its progress; "caggs": continuous aggregates (TSL edition), whose
    materialization watermarks TimescaleDB keeps (one per aggregate, in ``watermarks``).
    """

    mode: Literal["none", "tables", "caggs"]
    complete_until: datetime | None  # raw rows before it are rolled up; None: nothing yet
    watermarks: tuple[tuple[str, datetime | None], ...] = ()  # caggs: (view, watermark)
    lagging: str | None = None  # caggs: the aggregate whose watermark is complete_until
    # caggs: raw rows from here on are inside the refresh policies' window (None: no policy)
    refresh_from: datetime | None = None


def rollup_gate(conn: psycopg.Connection, resolved: ResolvedPolicies) -> RollupGate:
    rollups = [t for t in resolved.targets if t.kind == "rollup"]
    has_progress = conn.execute(Q["has_rollup_progress"]).fetchone()
    if has_progress and has_progress[0]:
        row = conn.execute(Q["rollup_tables_complete_until"]).fetchone()
        return RollupGate("tables", row[0] if row else None)
    if detect_edition(conn).continuous_aggregates:
        gate = _cagg_gate(conn)
        if gate is not None:
            return gate
    if not rollups:
        return RollupGate("none", None)
    row = conn.execute(Q["rollup_watermark"]).fetchone()
    return RollupGate("tables", row[0] if row else None)


def _cagg_gate(conn: psycopg.Connection) -> RollupGate | None:
    """The least watermark over the aggregates: 1h and 1d are refreshed from 1m, each after it,
    so raw rows count as rolled up only once every level has seen them (an aggregate that has
    materialized nothing holds the gate at "nothing yet")."""
    marks = tuple((str(view), at) for view, at in conn.execute(Q["cagg_watermarks"]))
    if not marks:
        return None
    window = conn.execute(Q["cagg_refresh_window_start"]).fetchone()
    refresh_from: datetime | None = window[0] if window else None
    reached: list[tuple[datetime, str]] = []
    for view, at in marks:
        if at is None:
            return RollupGate("caggs", None, marks, view, refresh_from)
        reached.append((at, view))
    at, view = min(reached)
    return RollupGate("caggs", at, marks, view, refresh_from)


def rollups_block(
    conn: psycopg.Connection,
    target: Target,
    start: datetime,
    end: datetime,
    gate: RollupGate,
) -> str | None:
    """Why raw rows of [start, end) may not go yet: their rollups are not complete."""
    if not target.requires_rollups:
        return None
    # How far the rollups got first: for rows never rolled up, that is the reason to give.
    if gate.mode == "tables" and (gate.complete_until is None or gate.complete_until < end):
        shown = "nothing yet" if gate.complete_until is None else gate.complete_until.isoformat()
        return (
            f"rollups incomplete: the refresher has rolled up to {shown}, "
            f"this range ends {end.isoformat()}"
        )
    if gate.mode == "caggs":
        behind = _cagg_block(conn, target, start, end, gate)
        if behind is not None:
            return behind
    row = conn.execute(Q["pending_invalidations"], {"start": start, "end": end}).fetchone()
    pending = int(row[0]) if row else 0
    if gate.mode == "caggs":
        schema, table = target.chunk_schema_table
        row = conn.execute(
            Q["cagg_pending_invalidations"],
            {
                "schema": schema,
                "table": table,
                "target_schema": target.schema,
                "target_table": target.table,
                "start": start,
                "end": end,
            },
        ).fetchone()
        pending += int(row[0]) if row else 0
    if pending:
        return (
            f"rollups incomplete: {pending} pending rollup invalidations overlap "
            f"[{start.isoformat()}, {end.isoformat()}); refresh the rollups first"
        )
    return None


def _cagg_block(
    conn: psycopg.Connection, target: Target, start: datetime, end: datetime, gate: RollupGate
) -> str | None:
    """TimescaleDB's watermark is the end of the last materialized bucket *with data*, not how
    far a refresh reached: a range ending after it is complete exactly when it has no rows at
    or after the watermark (rows before it were seen by a refresh; late ones are invalidations,
    which the caller checks next)."""
    if gate.refresh_from is not None and end > gate.refresh_from:
        # Unlike rpmstore's refresher, TimescaleDB recomputes buckets whose raw rows were
        # deleted or dropped: removing them inside the window would erase their rollups.
        return (
            "rollups at risk: the continuous aggregates' refresh policies recompute from "
            f"{_window_start(gate.refresh_from)}, this range ends {end.isoformat()}; removing "
            "its rows now would make the next refresh erase their rollups"
        )
    if gate.complete_until is None:
        return (
            f"rollups incomplete: continuous aggregate {gate.lagging} has rolled up to nothing "
            f"yet, this range ends {end.isoformat()}; refresh the rollups first"
        )
    if gate.complete_until >= end:
        return None
    past = slice_count(conn, SliceSpec(target, max(start, gate.complete_until), end))
    if not past:
        return None
    return (
        f"rollups incomplete: continuous aggregate {gate.lagging} has rolled up to "
        f"{gate.complete_until.isoformat()}, {past} rows of this range come after it; "
        "refresh the rollups first"
    )


def _window_start(at: datetime) -> str:
    # cagg_refresh_window_start reports a policy without start_offset as the year 1.
    return "the beginning" if at.year < 2 else at.isoformat()
