"""``rpmstore retention run``: archive, verify, record, then drop — slice by slice.

Order of a slice, each step only after the previous one succeeded:
 1. export to Parquet with a manifest and verify it by reading it back (no database change);
 2. record the archive in rpm.retention_ledger (committed: the archive is findable from now on);
 3. one short transaction: lock the holds and the slice's chunks against writers, recheck the
    rollups and the slice's checksum against the archive, copy held patients' rows to
    rpm.held_readings, drop_chunks on exactly the slice's range (or delete a class's rows), and
    mark the ledger entry — all or nothing.
A failure at any step leaves the rows in place and the ledger entry says why. Step 3 waits for
locks at most ``lock_timeout_ms`` (so ingest never queues behind it for long) and is retried with
backoff on transient errors (``schema.errors``: lock timeouts 55P03, deadlocks 40P01, ...).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from retention.archive import ArchivedSlice, ArchiveStore, SliceSpec, export_slice, slice_checksum
from retention.errors import RechunkInProgressError, RetentionError, SliceChangedError
from retention.plan import Plan, SliceWork, build_plan, rollup_gate, rollups_block
from retention.targets import Q, resolve
from schema.errors import is_transient, sqlstate

log = logging.getLogger(__name__)

T = TypeVar("T")


class SliceBlockedError(RetentionError):
    """Found at drop time: the slice may not go yet (rollups, holds); nothing was dropped."""


@dataclass(frozen=True)
class RetentionOptions:
    archive_url: str
    operator: str
    lock_timeout_ms: int = 500
    max_attempts: int = 8
    backoff_s: float = 0.05
    as_of: datetime | None = None  # default: now


@dataclass
class SliceOutcome:
    work: SliceWork
    status: str  # dropped, deleted, skipped, failed
    reason: str | None = None
    archived: ArchivedSlice | None = None
    rows_held: int = 0
    attempts: int = 0


@dataclass
class RunResult:
    run_id: int
    outcome: str
    plan: Plan | None
    slices: list[SliceOutcome] = field(default_factory=list)
    detail: str | None = None

    @property
    def rows_archived(self) -> int:
        return sum(s.archived.row_count for s in self.slices if s.archived)

    @property
    def rows_dropped(self) -> int:
        return sum(s.work.row_count for s in self.slices if s.status in ("dropped", "deleted"))

    @property
    def rows_held(self) -> int:
        return sum(s.rows_held for s in self.slices if s.status in ("dropped", "deleted"))


def with_retries(
    attempt: Callable[[], T], *, max_attempts: int, backoff_s: float, what: str
) -> tuple[T, int]:
    """Run ``attempt`` (one transaction) again after a transient error, with backoff.

    Transient as ``schema.errors`` says: mostly lock timeouts and deadlocks here, but also
    serialization failures, cancelled statements and a lost connection (on which the
    remaining attempts fail fast, and the last one is raised).
    """
    for number in range(1, max_attempts + 1):
        try:
            return attempt(), number
        except Exception as exc:
            if not is_transient(exc) or number == max_attempts:
                raise
            delay = min(5.0, backoff_s * 2 ** (number - 1)) * random.uniform(0.5, 1.5)
            log.warning(
                "retention step will be retried",
                extra={
                    "what": what,
                    "attempt": number,
                    "sqlstate": sqlstate(exc),
                    "delay_s": delay,
                },
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def run_retention(conn: psycopg.Connection, options: RetentionOptions) -> RunResult:
    """Carry out the plan; returns what happened (also recorded in the ledger)."""
    if not conn.autocommit:
        raise ValueError("retention needs an autocommit connection (it opens transactions)")
    as_of = options.as_of or datetime.now(UTC)
    run_id = _start_run(conn, "run", options.operator, as_of, options.archive_url)
    result = RunResult(run_id=run_id, outcome="running", plan=None)
    try:
        _refuse_during_rechunk(conn)
        result.plan = build_plan(conn, as_of=as_of)
        store: ArchiveStore | RetentionError
        try:
            store = ArchiveStore(options.archive_url)
        except RetentionError as exc:
            store = exc
        for work in result.plan.slices:
            result.slices.append(_carry_out(conn, work, store, run_id, options))
        result.outcome = _outcome(result)
        result.detail = _summary(result)
    except Exception as exc:
        result.outcome = "failed"
        result.detail = f"run stopped: {type(exc).__name__}: {exc}"
        log.exception("retention run failed", extra={"run_id": run_id})
        raise
    finally:
        _finish_run(conn, result)
    return result


def _refuse_during_rechunk(conn: psycopg.Connection) -> None:
    active = conn.execute(Q["active_rechunks"]).fetchall()
    if active:
        runs = ", ".join(f"run {run} of {target} ({state})" for run, target, state in active)
        raise RechunkInProgressError(
            f"a re-chunk is in progress ({runs}): finish it with 'rpmstore rechunk finalize' "
            "or 'rpmstore rechunk rollback' before running retention; nothing was dropped"
        )


def _carry_out(
    conn: psycopg.Connection,
    work: SliceWork,
    store: ArchiveStore | RetentionError,
    run_id: int,
    options: RetentionOptions,
) -> SliceOutcome:
    if work.blocked is not None:
        _add_entry(conn, run_id, work, "skipped", reason=work.blocked)
        log.info("slice skipped", extra={"target": work.target.name, "why": work.blocked})
        return SliceOutcome(work, "skipped", work.blocked)
    if isinstance(store, RetentionError):
        reason = f"archive failed, nothing dropped: {store}"
        _add_entry(conn, run_id, work, "failed", reason=reason)
        return SliceOutcome(work, "failed", reason)
    held = _active_holds(conn)
    spec = _spec(work, held)
    try:
        archived = export_slice(
            conn, store, spec, run_id=run_id, operator=options.operator, chunks=work.chunks
        )
    except (RetentionError, OSError, psycopg.Error) as exc:
        reason = f"archive failed, nothing dropped: {type(exc).__name__}: {exc}"
        log.warning("slice not archived", extra={"target": work.target.name, "why": reason})
        _add_entry(conn, run_id, work, "failed", reason=reason)
        return SliceOutcome(work, "failed", reason)
    entry_id = _add_entry(conn, run_id, work, "archived", archived=archived)
    step = _drop_slice if work.action == "drop_chunk" else _delete_rows
    try:
        (status, rows_held), attempts = with_retries(
            lambda: step(conn, work, archived, entry_id, run_id, options),
            max_attempts=options.max_attempts,
            backoff_s=options.backoff_s,
            what=f"{work.action} {work.target.name} {work.start.isoformat()}",
        )
    except SliceBlockedError as exc:
        _update_entry(conn, entry_id, "skipped", 0, f"{exc}; archived, nothing dropped")
        return SliceOutcome(work, "skipped", str(exc), archived)
    except (RetentionError, psycopg.Error) as exc:
        reason = f"{work.action} failed, data left in place: {type(exc).__name__}: {exc}"
        log.warning("slice not dropped", extra={"target": work.target.name, "why": reason})
        _update_entry(conn, entry_id, "failed", 0, reason)
        return SliceOutcome(work, "failed", reason, archived)
    log.info(
        "slice removed",
        extra={"target": work.target.name, "action": work.action, "rows": archived.row_count},
    )
    return SliceOutcome(work, status, None, archived, rows_held, attempts)


def _spec(work: SliceWork, held: list[str]) -> SliceSpec:
    if work.action == "drop_chunk":
        return SliceSpec(work.target, work.start, work.end)
    return SliceSpec(
        work.target, work.start, work.end, work.metric_ids, tuple(held), work.metric_class
    )


def _regclass_text(conn: psycopg.Connection, ident: sql.Identifier) -> str:
    return ident.as_string(conn)


def _lock_slice(
    conn: psycopg.Connection, work: SliceWork, options: RetentionOptions
) -> tuple[list[str], tuple[str, ...]]:
    """Inside the step's transaction: lock timeout, holds, chunk locks; the current holds."""
    conn.execute(Q["set_lock_timeout"], {"timeout": f"{options.lock_timeout_ms}ms"})
    conn.execute(Q["lock_holds"])
    held = _active_holds(conn)
    schema, table = work.target.chunk_schema_table
    chunks = (
        [
            (str(s), str(n))
            for s, n in conn.execute(
                Q["chunks_in_slice"],
                {"schema": schema, "table": table, "start": work.start, "end": work.end},
            )
        ]
        if work.action == "drop_chunk"
        else [tuple(c.split(".", 1)) for c in work.chunks]
    )
    for c_schema, c_name in chunks:
        conn.execute(sql.SQL(Q["lock_chunk_share"]).format(chunk=sql.Identifier(c_schema, c_name)))
    # Again, inside the transaction: a refresh or a rollup table may have changed things.
    gate = rollup_gate(conn, resolve(conn))
    blocked = rollups_block(conn, work.target, work.start, work.end, gate)
    if blocked is not None:
        raise SliceBlockedError(blocked)
    return held, tuple(f"{s}.{n}" for s, n in chunks)


def _drop_slice(
    conn: psycopg.Connection,
    work: SliceWork,
    archived: ArchivedSlice,
    entry_id: int,
    run_id: int,
    options: RetentionOptions,
) -> tuple[str, int]:
    with conn.transaction():
        held, chunks = _lock_slice(conn, work, options)
        spec = SliceSpec(work.target, work.start, work.end)
        rows, checksum = slice_checksum(conn, spec)
        if (rows, checksum) != (archived.row_count, archived.content_checksum):
            raise SliceChangedError(
                f"the slice changed after it was archived ({rows} rows now, "
                f"{archived.row_count} archived); the next run archives it again"
            )
        rows_held = 0
        if held and work.target.has_patients and work.target.kind == "raw":
            held_query = sql.SQL(Q["held_rows_in_slice"]).format(
                relation=work.target.storage,
                time_column=sql.SQL("t.{}").format(sql.Identifier(work.target.time_column)),
            )
            row = conn.execute(
                held_query, {"start": work.start, "end": work.end, "held": held}
            ).fetchone()
            rows_held = int(row[0]) if row else 0
            if rows_held and work.target.kind == "raw" and not work.target.is_readings:
                raise SliceBlockedError(
                    f"legal hold: {rows_held} rows of held patients and no held-rows table for "
                    f"{work.target.name}; the chunk is kept"
                )
            if rows_held:
                conn.execute(
                    Q["copy_held_readings"],
                    {"run_id": run_id, "start": work.start, "end": work.end, "held": held},
                )
        dropped = conn.execute(
            Q["drop_slice"],
            {
                "relation": _regclass_text(conn, work.target.relation),
                "start": work.start,
                "end": work.end,
            },
        ).fetchall()
        names = tuple(sorted(str(r[0]) for r in dropped))
        expected = tuple(sorted(chunks))
        if names != expected:
            raise SliceChangedError(
                f"drop_chunks would drop {list(names)}, not the archived {list(expected)}; "
                "rolled back"
            )
        _update_entry(conn, entry_id, "dropped", rows_held, None)
    return "dropped", rows_held


def _delete_rows(
    conn: psycopg.Connection,
    work: SliceWork,
    archived: ArchivedSlice,
    entry_id: int,
    _run_id: int,
    options: RetentionOptions,
) -> tuple[str, int]:
    with conn.transaction():
        held, _chunks = _lock_slice(conn, work, options)
        spec = _spec(work, held)
        query = sql.SQL(Q["delete_rows"]).format(
            relation=work.target.storage,
            time_column=sql.SQL("t.{}").format(sql.Identifier(work.target.time_column)),
        )
        row = conn.execute(query, spec.params()).fetchone()
        assert row is not None
        if (int(row[0]), str(row[1])) != (archived.row_count, archived.content_checksum):
            raise SliceChangedError(
                f"rows to delete ({row[0]}) differ from the archive ({archived.row_count}); "
                "rolled back, the next run archives them again"
            )
        held_row = conn.execute(
            sql.SQL(Q["held_rows_of_metrics"]).format(
                relation=work.target.storage,
                time_column=sql.SQL("t.{}").format(sql.Identifier(work.target.time_column)),
            ),
            {**spec.params(), "held": held},
        ).fetchone()
        rows_held = int(held_row[0]) if held_row else 0
        _update_entry(conn, entry_id, "deleted", rows_held, None)
    return "deleted", rows_held


def _active_holds(conn: psycopg.Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute(Q["active_holds"]).fetchall()]


def _start_run(
    conn: psycopg.Connection, action: str, operator: str, as_of: datetime, archive_url: str | None
) -> int:
    row = conn.execute(
        Q["start_run"],
        {"action": action, "operator": operator, "as_of": as_of, "archive_url": archive_url},
    ).fetchone()
    assert row is not None
    return int(row[0])


def _finish_run(conn: psycopg.Connection, result: RunResult) -> None:
    conn.execute(
        Q["finish_run"],
        {
            "run_id": result.run_id,
            "outcome": result.outcome,
            "rows_archived": result.rows_archived,
            "rows_dropped": result.rows_dropped,
            "rows_held": result.rows_held,
            "rows_restored": 0,
            "detail": result.detail,
        },
    )


def _add_entry(
    conn: psycopg.Connection,
    run_id: int,
    work: SliceWork,
    status: str,
    *,
    reason: str | None = None,
    archived: ArchivedSlice | None = None,
) -> int:
    params: dict[str, Any] = {
        "run_id": run_id,
        "target_schema": work.target.schema,
        "target_table": work.target.table,
        "chunk": ", ".join(work.chunks) or None,
        "metric_class": work.metric_class,
        "metric_ids": list(work.metric_ids) if work.metric_ids is not None else None,
        "start": work.start,
        "end": work.end,
        "action": work.action,
        "status": status,
        "row_count": archived.row_count if archived else work.row_count,
        "rows_held": work.held_rows if status == "skipped" else 0,
        "archive_uri": archived.archive_uri if archived else None,
        "manifest_uri": archived.manifest_uri if archived else None,
        "file_sha256": archived.file_sha256 if archived else None,
        "content_checksum": archived.content_checksum if archived else None,
        "reason": reason,
    }
    row = conn.execute(Q["add_entry"], params).fetchone()
    assert row is not None
    return int(row[0])


def _update_entry(
    conn: psycopg.Connection, entry_id: int, status: str, rows_held: int, reason: str | None
) -> None:
    conn.execute(
        Q["update_entry"],
        {"entry_id": entry_id, "status": status, "rows_held": rows_held, "reason": reason},
    )


def _outcome(result: RunResult) -> str:
    statuses = {s.status for s in result.slices}
    if not statuses:
        return "nothing_due"
    if statuses <= {"dropped", "deleted"}:
        return "succeeded"
    if "failed" in statuses and not statuses & {"dropped", "deleted"}:
        return "failed"
    return "partial"


def _summary(result: RunResult) -> str:
    counts: dict[str, int] = {}
    for s in result.slices:
        counts[s.status] = counts.get(s.status, 0) + 1
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    reasons = sorted({s.reason for s in result.slices if s.reason})
    text = ", ".join(parts) or "nothing due"
    if reasons:
        text += "; " + "; ".join(reasons[:5])
    return text
