"""Parquet archives of retention slices: export, verify by reading back, and restore.

An archive is one Parquet file and a JSON manifest next to it, under any fsspec URL (a local
folder, ``file://``, ``s3://`` with s3fs installed, ``memory://`` in tests). The manifest holds
the time range, the row count and two checksums: the SHA-256 of the file's bytes, and a content
checksum computed by PostgreSQL (the sum of a 64-bit hash of each row's text). Verification reads
the file back, loads it into a staging table like the source and recomputes the content checksum
there, in the same snapshot the rows were exported from: equal checksums mean the archive holds
exactly the rows that are about to be dropped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from psycopg import sql

from retention.errors import ArchiveError, ArchiveVerificationError
from retention.targets import Column, Q, Target

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_SPOOL_BYTES = 64 << 20  # COPY output kept in memory up to this, then on disk

# PostgreSQL types with a lossless Arrow equivalent; every other type is archived as its text
# form (PostgreSQL's own input syntax, so a restore COPYs it back unchanged).
_ARROW_TYPES: dict[str, pa.DataType] = {
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "timestamp without time zone": pa.timestamp("us"),
    "double precision": pa.float64(),
    "real": pa.float32(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "smallint": pa.int16(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "text": pa.string(),
}


def arrow_type(column: Column) -> pa.DataType:
    return _ARROW_TYPES.get(column.pg_type, pa.string())


@dataclass(frozen=True)
class SliceSpec:
    """What to archive: one time slice of a target, optionally some metrics without held rows."""

    target: Target
    start: datetime
    end: datetime
    metric_ids: tuple[int, ...] | None = None  # None: every row of the slice
    held: tuple[str, ...] = ()  # patient ids excluded (only with metric_ids)
    metric_class: str | None = None

    def filter_sql(self) -> sql.Composable:
        if self.metric_ids is None:
            return sql.SQL(Q["no_filter"])
        return sql.SQL(Q["filter_metrics_not_held"])

    def params(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "metric_ids": list(self.metric_ids or ()),
            "held": list(self.held),
        }


@dataclass(frozen=True)
class Manifest:
    version: int
    target: str
    time_column: str
    range_start: str
    range_end: str
    metric_class: str | None
    metric_ids: list[int] | None
    excluded_patients: list[str]
    row_count: int
    min_time: str | None
    max_time: str | None
    columns: list[dict[str, str]]
    file: str
    file_bytes: int
    file_sha256: str
    content_checksum: str
    content_checksum_algorithm: str
    run_id: int
    operator: str
    chunks: list[str]
    created_at: str


@dataclass(frozen=True)
class ArchivedSlice:
    archive_uri: str
    manifest_uri: str
    row_count: int
    file_sha256: str
    content_checksum: str


class ArchiveStore:
    """A folder (any fsspec URL) that archives are written to and read from."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        try:
            self._fs, self._root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:  # unknown protocol, missing driver
            raise ArchiveError(f"archive URL {url!r} is not usable: {exc}") from exc

    def _uri(self, path: str) -> str:
        protocol = self._fs.protocol
        scheme = protocol[0] if isinstance(protocol, tuple | list) else protocol
        return path if scheme == "file" else f"{scheme}://{path.removeprefix(f'{scheme}://')}"

    def slice_path(self, spec: SliceSpec, run_id: int) -> str:
        stamp = f"{spec.start:%Y%m%dT%H%M%SZ}_{spec.end:%Y%m%dT%H%M%SZ}"
        label = f"{stamp}_{spec.metric_class}" if spec.metric_class else stamp
        return posixpath.join(self._root, spec.target.name, label, f"run-{run_id}.parquet")

    def write_bytes(self, path: str, data: bytes) -> None:
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self._fs.open(path, "wb") as sink:
            sink.write(data)

    def read_bytes(self, uri: str) -> bytes:
        fs, path = fsspec.core.url_to_fs(uri)
        with fs.open(path, "rb") as source:
            data: bytes = source.read()
        return data

    def uri(self, path: str) -> str:
        return self._uri(path)


def _is_timestamp(column: Column) -> bool:
    return column.pg_type.startswith("timestamp ")


def _select_list(target: Target) -> sql.Composable:
    """Columns as the CSV export carries them: timestamps as exact epoch microseconds (so no
    text format or time zone is involved), Arrow-native types as they are, the rest as text."""
    parts: list[sql.Composable] = []
    for column in target.columns:
        ident = sql.Identifier(column.name)
        if _is_timestamp(column):
            parts.append(
                sql.SQL("(extract(epoch FROM {}) * 1000000)::bigint AS {}").format(ident, ident)
            )
        elif column.pg_type in _ARROW_TYPES:
            parts.append(ident)
        else:
            parts.append(sql.SQL("{}::text AS {}").format(ident, ident))
    return sql.SQL(", ").join(parts)


def _slice_query(name: str, spec: SliceSpec, relation: sql.Composable) -> sql.Composed:
    return sql.SQL(Q[name]).format(
        select_list=_select_list(spec.target),
        relation=relation,
        time_column=sql.SQL("t.{}").format(sql.Identifier(spec.target.time_column)),
        filter=spec.filter_sql(),
    )


def slice_checksum(
    conn: psycopg.Connection, spec: SliceSpec, relation: sql.Composable | None = None
) -> tuple[int, str]:
    """Row count and content checksum of the slice (in ``relation``, default the target)."""
    query = _slice_query("slice_checksum", spec, relation or spec.target.storage)
    row = conn.execute(query, spec.params()).fetchone()
    assert row is not None  # an aggregate always returns a row
    return int(row[0]), str(row[1])


def slice_count(conn: psycopg.Connection, spec: SliceSpec) -> int:
    row = conn.execute(
        _slice_query("slice_count", spec, spec.target.storage), spec.params()
    ).fetchone()
    assert row is not None
    return int(row[0])


def _arrow_schema(target: Target) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in target.columns])


def _record_batches(
    conn: psycopg.Connection, spec: SliceSpec, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The slice's rows as Arrow batches: COPY ... TO STDOUT (CSV) parsed by Arrow's reader."""
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(
        _slice_query("slice_rows", spec, spec.target.storage)
    )
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        with conn.cursor().copy(query, spec.params()) as copy:
            for data in copy:
                spool.write(data)
        if spool.tell() == 0:
            return
        spool.seek(0)
        csv_types = {
            f.name: pa.int64() if pa.types.is_timestamp(f.type) else f.type for f in schema
        }
        reader = pa_csv.open_csv(
            spool,
            read_options=pa_csv.ReadOptions(column_names=schema.names, block_size=1 << 23),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=csv_types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,  # "" is an empty string, not NULL
                true_values=["t"],
                false_values=["f"],
            ),
        )
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [
                    column.cast(field.type) if pa.types.is_timestamp(field.type) else column
                    for column, field in zip(batch.columns, schema, strict=True)
                ],
                schema=schema,
            )


def _parquet_bytes(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    rows = 0
    with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return buffer.getvalue(), rows


def load_into_stage(
    conn: psycopg.Connection, target: Target, table: pa.Table, stage: str
) -> sql.Identifier:
    """COPY an archived table into a temporary table shaped like the target (dropped at COMMIT).

    Arrow writes the CSV (NULL unquoted and empty, an empty string as "", timestamps in ISO
    8601), which PostgreSQL's CSV COPY reads back exactly; the content checksum of the staged
    rows proves it. Sets the transaction's TimeZone to UTC.
    """
    stage_id = sql.Identifier(stage)
    conn.execute(sql.SQL(Q["create_stage"]).format(stage=stage_id, relation=target.storage))
    names = [c.name for c in target.columns]
    copy = sql.SQL(Q["copy_stage"]).format(
        stage=stage_id, columns=sql.SQL(", ").join(sql.Identifier(n) for n in names)
    )
    # Naive UTC timestamps format ten times faster in Arrow's CSV writer than zoned ones; the
    # transaction's TimeZone makes PostgreSQL read them as UTC.
    conn.execute(Q["utc_session"])
    columns = table.select(names)
    naive = pa.schema(
        [
            pa.field(f.name, pa.timestamp(f.type.unit)) if pa.types.is_timestamp(f.type) else f
            for f in columns.schema
        ]
    )
    options = pa_csv.WriteOptions(include_header=False)
    with conn.cursor().copy(copy) as sink:
        for batch in columns.cast(naive).to_batches(max_chunksize=50_000):
            buffer = io.BytesIO()
            pa_csv.write_csv(batch, buffer, options)
            sink.write(buffer.getvalue())
    return stage_id


def export_slice(
    conn: psycopg.Connection,
    store: ArchiveStore,
    spec: SliceSpec,
    *,
    run_id: int,
    operator: str,
    chunks: Sequence[str],
) -> ArchivedSlice:
    """Write the slice to Parquet with its manifest and verify it; raise if anything differs.

    Runs in one REPEATABLE READ transaction: the rows exported, their checksum and the
    verification all see the same snapshot. Nothing in the database is changed.
    """
    schema = _arrow_schema(spec.target)
    path = store.slice_path(spec, run_id)
    with conn.transaction():
        conn.execute(Q["repeatable_read"])
        conn.execute(Q["utc_session"])  # row text (checksums) in one time zone throughout
        expected_rows, expected_sum = slice_checksum(conn, spec)
        data, rows = _parquet_bytes(_record_batches(conn, spec, schema), schema)
        if rows != expected_rows:
            raise ArchiveVerificationError(f"exported {rows} rows, the slice has {expected_rows}")
        try:
            store.write_bytes(path, data)
            written = store.read_bytes(store.uri(path))
        except OSError as exc:
            raise ArchiveError(f"writing {store.uri(path)} failed: {exc}") from exc
        digest = hashlib.sha256(written).hexdigest()
        if digest != hashlib.sha256(data).hexdigest():
            raise ArchiveVerificationError(f"{store.uri(path)} reads back different bytes")
        table = pq.read_table(pa.BufferReader(written))
        if table.num_rows != expected_rows:
            raise ArchiveVerificationError(
                f"{store.uri(path)} reads back {table.num_rows} rows, expected {expected_rows}"
            )
        with conn.transaction():  # a savepoint: the staging table goes away with it
            stage = load_into_stage(conn, spec.target, table, "retention_verify")
            full_range = SliceSpec(spec.target, spec.start, spec.end)
            staged_rows, staged_sum = slice_checksum(conn, full_range, stage)
            conn.execute(sql.SQL(Q["drop_stage"]).format(stage=stage))
        if (staged_rows, staged_sum) != (expected_rows, expected_sum):
            raise ArchiveVerificationError(
                f"{store.uri(path)} read back into the database differs from the source "
                f"({staged_rows} rows, checksum {staged_sum}; expected {expected_rows}, "
                f"{expected_sum})"
            )
        times = table.column(spec.target.time_column)
        bounds = pc.min_max(times) if table.num_rows else None
        manifest = Manifest(
            version=MANIFEST_VERSION,
            target=spec.target.name,
            time_column=spec.target.time_column,
            range_start=spec.start.isoformat(),
            range_end=spec.end.isoformat(),
            metric_class=spec.metric_class,
            metric_ids=list(spec.metric_ids) if spec.metric_ids is not None else None,
            excluded_patients=list(spec.held) if spec.metric_ids is not None else [],
            row_count=expected_rows,
            min_time=_iso(bounds["min"].as_py()) if bounds else None,
            max_time=_iso(bounds["max"].as_py()) if bounds else None,
            columns=[{"name": c.name, "type": c.pg_type} for c in spec.target.columns],
            file=posixpath.basename(path),
            file_bytes=len(written),
            file_sha256=digest,
            content_checksum=expected_sum,
            content_checksum_algorithm="sum(hashtextextended(row::text, 0)) as numeric",
            run_id=run_id,
            operator=operator,
            chunks=list(chunks),
            created_at=datetime.now(UTC).isoformat(),
        )
        manifest_path = path.removesuffix(".parquet") + ".manifest.json"
        manifest_bytes = json.dumps(asdict(manifest), indent=2, sort_keys=True).encode()
        try:
            store.write_bytes(manifest_path, manifest_bytes)
            if store.read_bytes(store.uri(manifest_path)) != manifest_bytes:
                raise ArchiveVerificationError(f"{store.uri(manifest_path)} reads back differently")
        except OSError as exc:
            raise ArchiveError(f"writing {store.uri(manifest_path)} failed: {exc}") from exc
    log.info(
        "slice archived",
        extra={"target": spec.target.name, "uri": store.uri(path), "rows": expected_rows},
    )
    return ArchivedSlice(
        archive_uri=store.uri(path),
        manifest_uri=store.uri(manifest_path),
        row_count=expected_rows,
        file_sha256=digest,
        content_checksum=expected_sum,
    )


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def read_archive(uri: str, expected_sha256: str | None) -> pa.Table:
    """An archived Parquet file, refused if its bytes are not the ones that were recorded."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        with fs.open(path, "rb") as source:
            data: bytes = source.read()
    except OSError as exc:
        raise ArchiveError(f"reading {uri} failed: {exc}") from exc
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ArchiveVerificationError(f"{uri} has changed since it was archived (SHA-256)")
    return pq.read_table(pa.BufferReader(data))


def rows_in_range(table: pa.Table, time_column: str, start: datetime, end: datetime) -> pa.Table:
    times = table.column(time_column)
    mask = pc.and_(
        pc.greater_equal(times, pa.scalar(start, type=times.type)),
        pc.less(times, pa.scalar(end, type=times.type)),
    )
    return table.filter(mask)
