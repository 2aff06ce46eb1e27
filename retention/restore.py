"""``rpmstore archive restore``: reload an archived time range into its table, idempotently.

The archives that overlap the range are found in rpm.retention_ledger, read back (refused if
their bytes changed since they were archived), cut to the range, COPYed into a staging table
shaped like the target and merged with ``INSERT ... ON CONFLICT DO NOTHING``: a row that is
already there (restored before, or never dropped) is left alone, so restoring twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from retention.archive import load_into_stage, read_archive, rows_in_range
from retention.errors import RestoreError, RetentionError
from retention.targets import Q, Target, resolve

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    run_id: int
    archives: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_restored: int = 0  # newly inserted; the rest were already present
    outcome: str = "running"


def restore_range(
    conn: psycopg.Connection,
    *,
    start: datetime,
    end: datetime,
    operator: str,
    target: tuple[str, str] = ("rpm", "readings"),
) -> RestoreResult:
    if not conn.autocommit:
        raise ValueError("restore needs an autocommit connection (it opens transactions)")
    if start >= end:
        raise RestoreError("--start must be before --end")
    row = conn.execute(
        Q["start_run"],
        {
            "action": "restore",
            "operator": operator,
            "as_of": datetime.now(UTC),
            "archive_url": None,
        },
    ).fetchone()
    assert row is not None
    result = RestoreResult(run_id=int(row[0]))
    detail: str | None = None
    try:
        resolved = {(t.schema, t.table): t for t in resolve(conn).targets}
        found = resolved.get(target)
        if found is None:
            raise RestoreError(f"{'.'.join(target)} is not a retention target of this database")
        archives = conn.execute(
            Q["archives_overlapping"],
            {"schema": target[0], "table": target[1], "start": start, "end": end},
        ).fetchall()
        for _entry, a_start, a_end, uri, _manifest, sha256, _metrics in archives:
            lo, hi = max(start, a_start), min(end, a_end)
            read, inserted = _restore_one(conn, found, uri, sha256, lo, hi)
            result.archives.append(uri)
            result.rows_read += read
            result.rows_restored += inserted
            conn.execute(
                Q["add_entry"],
                {
                    "run_id": result.run_id,
                    "target_schema": target[0],
                    "target_table": target[1],
                    "chunk": None,
                    "metric_class": None,
                    "metric_ids": None,
                    "start": lo,
                    "end": hi,
                    "action": "restore",
                    "status": "restored",
                    "row_count": inserted,
                    "rows_held": 0,
                    "archive_uri": uri,
                    "manifest_uri": None,
                    "file_sha256": sha256,
                    "content_checksum": None,
                    "reason": f"{read} archived rows in range, {read - inserted} already present",
                },
            )
        result.outcome = "succeeded" if archives else "nothing_due"
        detail = f"{len(archives)} archives, {result.rows_read} rows read, " + (
            f"{result.rows_restored} inserted" if archives else "no archive overlaps the range"
        )
    except (RetentionError, psycopg.Error, OSError) as exc:
        result.outcome = "failed"
        detail = f"restore failed: {type(exc).__name__}: {exc}"
        raise RestoreError(detail) from exc
    finally:
        conn.execute(
            Q["finish_run"],
            {
                "run_id": result.run_id,
                "outcome": result.outcome,
                "rows_archived": 0,
                "rows_dropped": 0,
                "rows_held": 0,
                "rows_restored": result.rows_restored,
                "detail": detail,
            },
        )
    return result


def _restore_one(
    conn: psycopg.Connection,
    target: Target,
    uri: str,
    sha256: str | None,
    start: datetime,
    end: datetime,
) -> tuple[int, int]:
    table = rows_in_range(read_archive(uri, sha256), target.time_column, start, end)
    with conn.transaction():
        stage = load_into_stage(conn, target, table, "retention_restore")
        merged = conn.execute(
            sql.SQL(Q["merge_stage"]).format(relation=target.storage, stage=stage)
        )
        inserted = merged.rowcount
        conn.execute(sql.SQL(Q["drop_stage"]).format(stage=stage))
    log.info("archive restored", extra={"uri": uri, "rows": table.num_rows, "inserted": inserted})
    return table.num_rows, inserted
