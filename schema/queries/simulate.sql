-- The ward simulator's outcome queries (psycopg placeholders). A simulation notes the newest
-- ingest batch id before it sends anything; every batch holding its payloads is newer, because
-- a batch takes its id only once its requests have arrived.

-- name: batch_marker
SELECT coalesce(max(batch_id), 0)
FROM rpm.ingest_batches;

-- name: batch_totals
-- What ingest recorded for the batches of one source since the marker: stored rows,
-- duplicates, conflicts and quarantine rows (conflicts included), and how many batches.
SELECT count(*),
       coalesce(sum(row_count), 0),
       coalesce(sum(duplicate_count), 0),
       coalesce(sum(conflict_count), 0),
       coalesce(sum(quarantine_count), 0)
FROM rpm.ingest_batches
WHERE batch_id > %(after_batch)s
  AND source = %(source)s;

-- name: quarantine_by_reason
-- Quarantine rows of the simulated devices since the marker (claimed_device is the token's
-- device over HTTP and the topic's over MQTT, so even unparseable payloads are attributed).
SELECT reason, count(*)
FROM rpm.ingest_quarantine
WHERE batch_id > %(after_batch)s
  AND source = %(source)s
  AND claimed_device = ANY (%(device_ids)s::text[])
GROUP BY reason
ORDER BY count(*) DESC, reason;

-- name: ward_rows
-- Rows the simulated devices have in the hypertable from batches since the marker.
SELECT count(*)
FROM rpm.readings
WHERE device_id = ANY (%(device_ids)s::uuid[])
  AND batch_id > %(after_batch)s;

-- name: latest_per_metric
-- One patient's newest reading of every metric (the per-patient timeline index answers it).
SELECT DISTINCT ON (r.metric_id)
       r.measured_at, m.code, r.value, m.canonical_unit, r.received_at
FROM rpm.readings r
JOIN rpm.metrics m USING (metric_id)
WHERE r.patient_id = %(patient_id)s
ORDER BY r.metric_id, r.measured_at DESC;
