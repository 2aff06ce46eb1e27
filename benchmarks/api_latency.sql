-- Statements of benchmarks/test_api_latency.py (psycopg placeholders): bulk loading tens of
-- millions of readings server-side, the care-team set-up, and the raw-versus-rollup comparison.

-- name: register_batch
-- The lineage row every bulk-loaded reading points at, as an import would record it.
INSERT INTO rpm.ingest_batches (source, ingestor, row_count)
VALUES ('import', 'benchmarks/test_api_latency', %(rows)s)
RETURNING batch_id;

-- name: load_steps
-- Steps [first_step, last_step) of every (patient, metric) series in one statement: reading k
-- of a series is measured at t0 + k * step + the patient's offset (patients do not all report
-- at the same instant), so slices of steps never overlap and can run on several connections.
-- Values are deterministic, inside each metric's plausible range and below every default
-- alert threshold (bulk data must not look like a ward in crisis).
INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, patient_id,
                          metric_id)
SELECT %(t0)s::timestamptz + k * %(step)s::interval + s.n * %(jitter)s::interval,
       %(t0)s::timestamptz + k * %(step)s::interval + s.n * %(jitter)s::interval
           + INTERVAL '2 seconds',
       m.base + ((k + s.n * 7 + m.metric_id * 13) %% m.span),
       %(batch_id)s,
       s.device_id,
       s.patient_id,
       m.metric_id
FROM generate_series(%(first_step)s::bigint, %(last_step)s::bigint - 1) AS k
CROSS JOIN unnest(%(patients)s::uuid[], %(devices)s::uuid[])
    WITH ORDINALITY AS s (patient_id, device_id, n)
CROSS JOIN unnest(%(metrics)s::smallint[], %(bases)s::float8[], %(spans)s::integer[])
    AS m (metric_id, base, span);

-- name: new_care_team
INSERT INTO rpm.care_teams (name) VALUES (%(name)s) RETURNING care_team_id;

-- name: new_clinician
INSERT INTO rpm.clinicians (subject, display_name)
VALUES (%(subject)s, %(subject)s)
RETURNING clinician_id;

-- name: add_member
INSERT INTO rpm.care_team_members (care_team_id, clinician_id)
VALUES (%(care_team_id)s, %(clinician_id)s);

-- name: add_team_patients
INSERT INTO rpm.care_team_patients (care_team_id, patient_id)
SELECT %(care_team_id)s, unnest(%(patients)s::uuid[]);

-- name: rollup_hourly
-- The 30-day hourly timeline as the API reads it: materialized 1-hour rollups.
SELECT bucket_start, count, min, max, avg, last, last_at
FROM rpm.vitals_timeline(%(patient_id)s, %(metric_id)s, %(start)s, %(end)s, '1h');

-- name: raw_hourly
-- The same answer aggregated from rpm.readings at query time (same buckets, same gap rows,
-- same tie rule for the last value as the rollups).
SELECT g.b AS bucket_start, coalesce(v.n, 0) AS count, v.lo AS min, v.hi AS max,
       v.total / v.n AS avg, v.last_value AS last, v.last_at
FROM generate_series(time_bucket(INTERVAL '1 hour', %(start)s::timestamptz),
                     %(end)s::timestamptz - INTERVAL '1 microsecond',
                     INTERVAL '1 hour') AS g (b)
LEFT JOIN (
    SELECT time_bucket(INTERVAL '1 hour', r.measured_at) AS b, count(*) AS n,
           sum(r.value) AS total, min(r.value) AS lo, max(r.value) AS hi,
           (max(ARRAY[date_part('epoch', r.measured_at - timestamptz 'epoch'), r.value]))[2]
               AS last_value,
           max(r.measured_at) AS last_at
    FROM rpm.readings r
    WHERE r.patient_id = %(patient_id)s AND r.metric_id = %(metric_id)s
      AND r.measured_at >= time_bucket(INTERVAL '1 hour', %(start)s::timestamptz)
      AND r.measured_at < %(end)s
    GROUP BY 1
) v ON v.b = g.b
ORDER BY g.b;

-- name: load_device_rows
-- Rows the ingest load stored (its devices write nothing else).
SELECT count(*) FROM rpm.readings WHERE device_id = ANY (%(devices)s::uuid[]);

-- name: vacuum_analyze_database
-- Every table of the database, each chunk and the rollups' storage included: the steady state
-- of a store that received these readings over weeks, with autovacuum keeping up, so that no
-- autovacuum pass over the freshly loaded rows runs during the measurements. (It was suspected
-- of the slow idle alert visibility at 50 million readings; the run after this change showed
-- the same, so that cause is still open.)
VACUUM (ANALYZE);

-- name: set_bulk_wal
-- Bulk-load only, on the benchmark's own server: fewer checkpoints (and full-page images)
-- while tens of millions of rows go in. Reset before anything is measured.
ALTER SYSTEM SET max_wal_size = '8GB';

-- name: reset_bulk_wal
ALTER SYSTEM RESET max_wal_size;

-- name: reload_config
SELECT pg_reload_conf();

-- name: jit_off
SET jit = off;

-- name: checkpoint
CHECKPOINT;
