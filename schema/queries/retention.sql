-- Retention, archive and legal hold (psycopg placeholders). Blocks with {braces} are templates
-- for psycopg.sql: relation and column names are filled in with sql.Identifier, values are
-- always bound parameters.

-- name: raw_horizon
-- The oldest measured_at rpm.readings keeps (the longest period over its metric classes), NULL
-- when no policy applies. No parameters, so asyncpg (ingest) and psycopg run it alike.
SELECT rpm.readings_retention_horizon();

-- name: policies
SELECT policy_id, target_schema::text, target_table::text, metric_class, keep, kind,
       requires_rollups
FROM rpm.retention_policies
WHERE enabled
ORDER BY target_schema, target_table, metric_class NULLS FIRST;

-- name: metric_classes
SELECT metric_class, array_agg(metric_id ORDER BY metric_id)
FROM rpm.metric_retention_classes
GROUP BY metric_class;

-- name: all_metric_ids
SELECT array_agg(metric_id ORDER BY metric_id) FROM rpm.metrics;

-- name: resolve_target
-- A hypertable by name, or a continuous aggregate (its materialization hypertable holds the
-- chunks; drop_chunks is called on the aggregate itself).
SELECT h.hypertable_schema::text, h.hypertable_name::text, NULL::text, NULL::text
FROM timescaledb_information.hypertables h
WHERE h.hypertable_schema = %(schema)s AND h.hypertable_name = %(table)s
UNION ALL
SELECT c.materialization_hypertable_schema::text, c.materialization_hypertable_name::text,
       c.view_schema::text, c.view_name::text
FROM timescaledb_information.continuous_aggregates c
WHERE c.view_schema = %(schema)s AND c.view_name = %(table)s;

-- name: relation_exists
SELECT to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text)) IS NOT NULL;

-- name: time_dimension
SELECT column_name::text, column_type::text
FROM timescaledb_information.dimensions
WHERE hypertable_schema = %(schema)s AND hypertable_name = %(table)s
  AND dimension_type = 'Time'
ORDER BY dimension_number
LIMIT 1;

-- name: columns
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: chunks_before
-- Chunks whose whole time range lies before the horizon, with their size on disk.
SELECT c.chunk_schema::text, c.chunk_name::text, c.range_start, c.range_end,
       pg_total_relation_size(format('%%I.%%I', c.chunk_schema, c.chunk_name)::regclass)
FROM timescaledb_information.chunks c
WHERE c.hypertable_schema = %(schema)s AND c.hypertable_name = %(table)s
  AND c.range_end <= %(horizon)s
ORDER BY c.range_start, c.chunk_name;

-- name: chunks_starting_before
SELECT c.chunk_schema::text, c.chunk_name::text, c.range_start, c.range_end
FROM timescaledb_information.chunks c
WHERE c.hypertable_schema = %(schema)s AND c.hypertable_name = %(table)s
  AND c.range_start < %(horizon)s
ORDER BY c.range_start, c.chunk_name;

-- name: chunks_in_slice
SELECT c.chunk_schema::text, c.chunk_name::text
FROM timescaledb_information.chunks c
WHERE c.hypertable_schema = %(schema)s AND c.hypertable_name = %(table)s
  AND c.range_start = %(start)s AND c.range_end = %(end)s
ORDER BY c.chunk_schema, c.chunk_name;

-- name: active_holds
SELECT DISTINCT patient_id FROM rpm.legal_holds WHERE released_at IS NULL ORDER BY patient_id;

-- name: lock_holds
-- A hold placed while a slice is being dropped waits for the drop to commit, so the slice's
-- held rows are decided against a stable set of holds.
LOCK TABLE rpm.legal_holds IN SHARE MODE;

-- name: pending_invalidations
-- Late rows recorded for a range the rollups have not recomputed yet.
SELECT count(*)
FROM rpm.rollup_invalidations
WHERE range_start < %(end)s AND range_end >= %(start)s;

-- name: rollup_watermark
-- How far rollups are complete when only rpm.rollup_watermark exists: NULL while nothing is
-- rolled up ('-infinity'); 'infinity' reads as the far future.
SELECT CASE WHEN isfinite(invalidation_threshold) THEN invalidation_threshold
            WHEN invalidation_threshold > now() THEN timestamptz '9999-12-31 00:00+00' END
FROM rpm.rollup_watermark;

-- name: has_rollup_progress
-- The Apache edition's rollup tables (migration 0004) record what they have materialized.
SELECT to_regclass('rpm.rollup_progress') IS NOT NULL;

-- name: rollup_tables_complete_until
-- Apache edition: rows before the invalidation threshold are visible or recorded as
-- invalidations, and buckets before materialized_until are in the rollup tables; raw rows
-- before the lesser of the two (and without pending invalidations) are rolled up.
SELECT CASE WHEN isfinite(least(w.invalidation_threshold, p.materialized_until))
            THEN least(w.invalidation_threshold, p.materialized_until) END
FROM rpm.rollup_watermark w CROSS JOIN rpm.rollup_progress p;

-- name: cagg_watermarks
-- TSL edition: each continuous aggregate's materialization watermark, finest first. TimescaleDB
-- sets it to the end of the last materialized bucket that holds data (so rows before it were
-- seen by a refresh); NULL before anything is materialized (it then reports the smallest
-- timestamptz). Only rpmstore's rollups (schema rpm) count.
SELECT quote_ident(c.user_view_schema::text) || '.' || quote_ident(c.user_view_name::text),
       CASE WHEN w.at >= timestamptz '0001-01-01 00:00:00+00' THEN w.at END
FROM _timescaledb_catalog.continuous_agg c
CROSS JOIN LATERAL (
    SELECT _timescaledb_functions.to_timestamp(
               _timescaledb_functions.cagg_watermark(c.mat_hypertable_id)) AS at
) w
WHERE c.user_view_schema = 'rpm'
ORDER BY c.mat_hypertable_id;

-- name: cagg_refresh_window_start
-- TSL edition: the earliest instant a refresh of the rpm continuous aggregates recomputes. A
-- policy starts at now() - start_offset (no start_offset: from the beginning); `rollups
-- refresh` at its day-aligned horizon start, up to a day earlier (jobs.rollups.POLICY_MARGIN:
-- the policies start a day inside the raw horizon), hence the extra day. A raw row removed
-- after it is an invalidation the next refresh processes: the buckets are recomputed without
-- the row, and its rollups are gone. NULL when no refresh policy exists; "from the beginning"
-- is reported as the year 1 (-infinity would not load into Python).
SELECT min(CASE WHEN j.config ->> 'start_offset' IS NULL THEN timestamptz '0001-01-01 00:00+00'
                ELSE now() - (j.config ->> 'start_offset')::interval - interval '1 day' END)
FROM _timescaledb_catalog.continuous_agg c
JOIN timescaledb_information.jobs j
  -- by the id in the policy's config: the jobs view's hypertable columns name the
  -- materialisation hypertable before TimescaleDB 2.20 and the aggregate itself since.
  ON (j.config ->> 'mat_hypertable_id')::integer = c.mat_hypertable_id
WHERE c.user_view_schema = 'rpm'
  AND j.proc_name = 'policy_refresh_continuous_aggregate';

-- name: cagg_pending_invalidations
-- TSL edition: rows changed below the continuous aggregates' invalidation threshold that no
-- refresh has picked up yet (TimescaleDB's counterpart of rpm.rollup_invalidations), in
-- [start, end) of one hypertable. The log's ranges are inclusive, in microseconds since the
-- Unix epoch. drop_chunks logs each dropped chunk's whole range [range_start, range_end] too,
-- touching the next chunk's first instant: entries that are exactly a range retention itself
-- dropped (its ledger) stand for no row and are not counted.
SELECT count(*)
FROM _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log l
JOIN _timescaledb_catalog.hypertable h ON h.id = l.hypertable_id
WHERE h.schema_name = %(schema)s AND h.table_name = %(table)s
  AND l.lowest_modified_value < _timescaledb_functions.to_unix_microseconds(%(end)s)
  AND l.greatest_modified_value >= _timescaledb_functions.to_unix_microseconds(%(start)s)
  AND NOT EXISTS (
      SELECT 1
      FROM rpm.retention_ledger d
      WHERE d.target_schema = %(target_schema)s AND d.target_table = %(target_table)s
        AND d.action = 'drop_chunk' AND d.status = 'dropped'
        AND _timescaledb_functions.to_unix_microseconds(d.range_start) = l.lowest_modified_value
        AND _timescaledb_functions.to_unix_microseconds(d.range_end) = l.greatest_modified_value
  );

-- name: lock_chunk_share
-- Blocks writers into this chunk (only late readings would write there), not readers.
LOCK TABLE {chunk} IN SHARE MODE;

-- name: set_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: repeatable_read
-- The export, its checksum and the archive's verification see one snapshot.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;

-- name: utc_session
-- For the rest of the transaction: timestamps without offset are read as UTC.
SELECT set_config('TimeZone', 'UTC', true);

-- name: slice_rows
-- The rows of one time slice (optionally of some metrics only, excluding held patients), run
-- inside COPY (...) TO STDOUT: timestamps as epoch microseconds, types Parquet has no match for
-- as their PostgreSQL text form (see retention/archive.py).
SELECT {select_list} FROM {relation} t
WHERE {time_column} >= %(start)s AND {time_column} < %(end)s {filter};

-- name: slice_checksum
-- Row count and an order-independent checksum of the slice: the sum of a 64-bit hash of each
-- row's text. The same value computed over the archive loaded back into a staging table (same
-- column types, same session) shows the archive holds exactly these rows. It guards against
-- conversion faults and concurrent changes, not against an adversary (the file's SHA-256 in
-- the manifest does that for the archive itself).
SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
FROM {relation} t
WHERE {time_column} >= %(start)s AND {time_column} < %(end)s {filter};

-- name: slice_count
SELECT count(*)
FROM {relation} t
WHERE {time_column} >= %(start)s AND {time_column} < %(end)s {filter};

-- name: filter_metrics_not_held
AND t.metric_id = ANY(%(metric_ids)s)
AND t.patient_id <> ALL(%(held)s::uuid[]);

-- name: no_filter
AND true;

-- name: held_rows_in_slice
SELECT count(*), count(DISTINCT patient_id)
FROM {relation} t
WHERE {time_column} >= %(start)s AND {time_column} < %(end)s
  AND t.patient_id = ANY(%(held)s::uuid[]);

-- name: held_rows_of_metrics
SELECT count(*), count(DISTINCT patient_id)
FROM {relation} t
WHERE {time_column} >= %(start)s AND {time_column} < %(end)s
  AND t.patient_id = ANY(%(held)s::uuid[])
  AND t.metric_id = ANY(%(metric_ids)s);

-- name: copy_held_readings
-- Held patients' rows go aside before their chunk is dropped; a second copy of the same row
-- (a rerun after a failure) is a no-op.
INSERT INTO rpm.held_readings (measured_at, received_at, value, batch_id, device_id, patient_id,
                               metric_id, utc_offset_minutes, client_reading_id, held_by_run)
SELECT measured_at, received_at, value, batch_id, device_id, patient_id, metric_id,
       utc_offset_minutes, client_reading_id, %(run_id)s
FROM rpm.readings
WHERE measured_at >= %(start)s AND measured_at < %(end)s
  AND patient_id = ANY(%(held)s::uuid[])
ON CONFLICT (device_id, metric_id, measured_at) DO NOTHING;

-- name: drop_slice
-- Exactly the chunks whose range lies within [start, end]: the slice's own.
SELECT chunk::text
FROM drop_chunks(%(relation)s::regclass, older_than => %(end)s::timestamptz,
                 newer_than => %(start)s::timestamptz) AS chunk
ORDER BY 1;

-- name: delete_rows
-- A metric class kept for less than its table: its archived rows go, held patients' rows stay.
-- The checksum of what was deleted must equal the archive's, or the transaction is rolled back.
WITH gone AS (
    DELETE FROM {relation} t
    WHERE {time_column} >= %(start)s AND {time_column} < %(end)s
      AND t.metric_id = ANY(%(metric_ids)s)
      AND t.patient_id <> ALL(%(held)s::uuid[])
    RETURNING t.*
)
SELECT count(*), coalesce(sum(hashtextextended(g::text, 0)::numeric), 0)::text
FROM gone g;

-- name: create_stage
CREATE TEMP TABLE {stage} (LIKE {relation} INCLUDING DEFAULTS) ON COMMIT DROP;

-- name: copy_stage
COPY {stage} ({columns}) FROM STDIN (FORMAT csv);

-- name: drop_stage
DROP TABLE {stage};

-- name: merge_stage
-- Restores are idempotent: a row already present (the table's unique keys) is left alone.
INSERT INTO {relation} SELECT * FROM {stage} ON CONFLICT DO NOTHING;

-- name: start_run
INSERT INTO rpm.retention_runs (action, operator, as_of, archive_url)
VALUES (%(action)s, %(operator)s, %(as_of)s, %(archive_url)s)
RETURNING run_id;

-- name: finish_run
UPDATE rpm.retention_runs
SET finished_at = clock_timestamp(), outcome = %(outcome)s, rows_archived = %(rows_archived)s,
    rows_dropped = %(rows_dropped)s, rows_held = %(rows_held)s, rows_restored = %(rows_restored)s,
    detail = %(detail)s
WHERE run_id = %(run_id)s;

-- name: add_entry
INSERT INTO rpm.retention_ledger (run_id, target_schema, target_table, chunk, metric_class,
                                  metric_ids, range_start, range_end, action, status, row_count,
                                  rows_held, archive_uri, manifest_uri, file_sha256,
                                  content_checksum, reason)
VALUES (%(run_id)s, %(target_schema)s, %(target_table)s, %(chunk)s, %(metric_class)s,
        %(metric_ids)s, %(start)s, %(end)s, %(action)s, %(status)s, %(row_count)s,
        %(rows_held)s, %(archive_uri)s, %(manifest_uri)s, %(file_sha256)s,
        %(content_checksum)s, %(reason)s)
RETURNING entry_id;

-- name: update_entry
UPDATE rpm.retention_ledger
SET status = %(status)s, rows_held = %(rows_held)s, reason = %(reason)s,
    updated_at = clock_timestamp()
WHERE entry_id = %(entry_id)s;

-- name: archives_overlapping
-- Verified archives of a table that overlap [start, end), oldest first.
SELECT entry_id, range_start, range_end, archive_uri, manifest_uri, file_sha256, metric_ids
FROM rpm.retention_ledger
WHERE target_schema = %(schema)s AND target_table = %(table)s
  AND archive_uri IS NOT NULL AND status IN ('archived', 'dropped', 'deleted')
  AND range_start < %(end)s AND range_end > %(start)s
ORDER BY range_start, entry_id;

-- name: place_hold
INSERT INTO rpm.legal_holds (patient_id, reason, placed_by)
VALUES (%(patient_id)s, %(reason)s, %(placed_by)s)
RETURNING hold_id;

-- name: release_hold
UPDATE rpm.legal_holds
SET released_at = now(), released_by = %(released_by)s, release_reason = %(reason)s
WHERE hold_id = %(hold_id)s AND released_at IS NULL
RETURNING hold_id;

-- name: list_holds
SELECT hold_id, patient_id, reason, placed_by, placed_at, released_by, released_at
FROM rpm.legal_holds
ORDER BY hold_id;

-- name: active_rechunks
-- Re-chunk / repartition runs not yet finalized or rolled back: their verification compares
-- source and target chunk by chunk, so retention must not drop chunks under them.
SELECT run_id, format('%%I.%%I', table_schema, table_name) AS target, state
FROM rpm.rechunk_runs
WHERE state IN ('copying', 'cut_over')
ORDER BY run_id;
