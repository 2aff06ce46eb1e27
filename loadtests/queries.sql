-- The load test's own measurements, from the database (psycopg placeholders). Loaded with
-- schema.sql.parse_queries by loadtests/run.py.

-- name: rows_committed_between
-- Rows stored by ingest batches after the run's marker batch, committed in [from, to).
-- committed_at is the batch transaction's start, at most a batch's commit time earlier.
SELECT coalesce(sum(row_count), 0)
FROM rpm.ingest_batches
WHERE batch_id > %(after_batch)s
  AND committed_at >= %(from)s
  AND committed_at < %(to)s;
