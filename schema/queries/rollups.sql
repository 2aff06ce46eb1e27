-- The rollup refresher's statements (psycopg placeholders). schema/rollups.py says when each
-- runs; migration 0004 creates the objects and explains the aggregates, which are the same on
-- every level and edition: count, sum, min, max, the last value (latest measured_at, then the
-- larger value) and its time.

-- name: window
-- The refresh window, from the database clock (the one ingest and retention use): buckets
-- before the threshold are materialized; nothing before horizon_start is ever recomputed from
-- raw readings. horizon_start is the first UTC midnight after now() - raw_horizon, so every
-- level's buckets at or after it lie wholly inside the raw window.
SELECT time_bucket(INTERVAL '1 minute', now() - %(lag)s::interval) AS threshold,
       time_bucket(INTERVAL '1 day', now() - %(raw_horizon)s::interval) + INTERVAL '1 day'
           AS horizon_start;

-- name: lock
-- One refresher at a time (session lock, key 'RPMS'/2 next to the migration runner's 'RPMS'/1):
-- two refreshers recomputing the same bucket from different snapshots could leave the older
-- answer last.
SELECT pg_advisory_lock(%(lock_class)s, %(lock_object)s);

-- name: try_lock
SELECT pg_try_advisory_lock(%(lock_class)s, %(lock_object)s);

-- name: unlock
SELECT pg_advisory_unlock(%(lock_class)s, %(lock_object)s);

-- name: threshold
-- NULL while nothing has been rolled up (-infinity would not load into Python).
SELECT nullif(invalidation_threshold, '-infinity') FROM rpm.rollup_watermark;

-- name: set_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: lock_watermark
-- Ingest reads the threshold at the start of every batch and keeps its ACCESS SHARE lock until
-- COMMIT. Waiting for ACCESS EXCLUSIVE therefore waits for every batch that may have read the
-- old threshold: after this commits, each reading below the new threshold is either already
-- committed (and seen by the materialization that follows) or recorded as an invalidation.
LOCK TABLE rpm.rollup_watermark IN ACCESS EXCLUSIVE MODE;

-- name: advance_threshold
UPDATE rpm.rollup_watermark
SET invalidation_threshold = %(threshold)s, updated_at = now()
WHERE invalidation_threshold < %(threshold)s;

-- name: progress
SELECT nullif(materialized_until, '-infinity') FROM rpm.rollup_progress;

-- name: materialize_1m
-- New buckets [from, until) from raw readings. The three materialize_* statements run in one
-- transaction before set_progress. The lower bounds come in as parameters (the caller computes
-- them from materialized_until and the horizon): a bound read from rpm.rollup_progress in a
-- join would hide it from chunk exclusion and the index, and every one-day step would rescan
-- all older chunks (quadratic in the backlog).
INSERT INTO rpm.rollup_1m (bucket_start, patient_id, metric_id, reading_count, value_sum,
                           value_min, value_max, last_value, last_at)
SELECT time_bucket(INTERVAL '1 minute', r.measured_at), r.patient_id, r.metric_id,
       count(*), sum(r.value), min(r.value), max(r.value),
       (max(ARRAY[date_part('epoch', r.measured_at - timestamptz 'epoch'), r.value]))[2],
       max(r.measured_at)
FROM rpm.readings r
WHERE r.measured_at >= %(from_1m)s
  AND r.measured_at < %(until)s
GROUP BY 1, 2, 3;

-- name: materialize_1h
-- Hours that end by until, from the minutes just written (hierarchical, like the TSL
-- edition's continuous aggregates): a coarser bucket is materialized once, when complete.
INSERT INTO rpm.rollup_1h (bucket_start, patient_id, metric_id, reading_count, value_sum,
                           value_min, value_max, last_value, last_at)
SELECT time_bucket(INTERVAL '1 hour', m.bucket_start), m.patient_id, m.metric_id,
       sum(m.reading_count), sum(m.value_sum), min(m.value_min), max(m.value_max),
       (max(ARRAY[date_part('epoch', m.last_at - timestamptz 'epoch'), m.last_value]))[2],
       max(m.last_at)
FROM rpm.rollup_1m m
WHERE m.bucket_start >= %(from_1h)s
  AND m.bucket_start < time_bucket(INTERVAL '1 hour', %(until)s::timestamptz)
GROUP BY 1, 2, 3;

-- name: materialize_1d
INSERT INTO rpm.rollup_1d (bucket_start, patient_id, metric_id, reading_count, value_sum,
                           value_min, value_max, last_value, last_at)
SELECT time_bucket(INTERVAL '1 day', h.bucket_start), h.patient_id, h.metric_id,
       sum(h.reading_count), sum(h.value_sum), min(h.value_min), max(h.value_max),
       (max(ARRAY[date_part('epoch', h.last_at - timestamptz 'epoch'), h.last_value]))[2],
       max(h.last_at)
FROM rpm.rollup_1h h
WHERE h.bucket_start >= %(from_1d)s
  AND h.bucket_start < time_bucket(INTERVAL '1 day', %(until)s::timestamptz)
GROUP BY 1, 2, 3;

-- name: set_progress
UPDATE rpm.rollup_progress SET materialized_until = %(until)s, updated_at = now();

-- name: create_dirty
-- Ranges to recompute in this transaction: 'raw' = invalidated measurement times, then the
-- bucket ranges of each level. Emptied at every COMMIT.
CREATE TEMP TABLE IF NOT EXISTS rollup_dirty (
    resolution text NOT NULL,
    patient_id uuid NOT NULL,
    metric_id  smallint NOT NULL,
    lo         timestamptz NOT NULL,
    hi         timestamptz NOT NULL  -- exclusive
) ON COMMIT DELETE ROWS;

-- name: consume_invalidations
-- The oldest invalidations, deleted in the transaction that recomputes their buckets: a
-- failed refresh leaves them for the next one. Ingest records each range with its readings in
-- one transaction, so every consumed range's readings are visible to the statements below.
WITH consumed AS (
    DELETE FROM rpm.rollup_invalidations
    WHERE invalidation_id IN (
        SELECT invalidation_id FROM rpm.rollup_invalidations
        ORDER BY invalidation_id
        LIMIT %(limit)s
    )
    RETURNING patient_id, metric_id, range_start, range_end
), kept AS (
    INSERT INTO rollup_dirty (resolution, patient_id, metric_id, lo, hi)
    SELECT 'raw', patient_id, metric_id, range_start, range_end + INTERVAL '1 microsecond'
    FROM consumed
)
SELECT count(*), count(*) FILTER (WHERE range_start < %(horizon_start)s)
FROM consumed;

-- name: mark_dirty
-- The %(resolution)s buckets that the %(finer)s ranges touch, clipped to what may be
-- recomputed (from horizon_start to the materialized part of this level; later buckets are
-- materialized fresh anyway) and merged into disjoint ranges per patient and metric, so the
-- recompute join meets every reading once.
INSERT INTO rollup_dirty (resolution, patient_id, metric_id, lo, hi)
SELECT %(resolution)s, patient_id, metric_id, min(lo), max(hi)
FROM (
    SELECT patient_id, metric_id, lo, hi,
           count(*) FILTER (WHERE starts_range)
               OVER (PARTITION BY patient_id, metric_id ORDER BY lo, hi) AS range_number
    FROM (
        SELECT patient_id, metric_id, lo, hi,
               lo > coalesce(max(hi) OVER (PARTITION BY patient_id, metric_id ORDER BY lo, hi
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                             '-infinity') AS starts_range
        FROM (
            SELECT d.patient_id, d.metric_id,
                   greatest(time_bucket(%(width)s::interval, d.lo), %(horizon_start)s) AS lo,
                   least(time_bucket(%(width)s::interval, d.hi - INTERVAL '1 microsecond')
                             + %(width)s::interval,
                         time_bucket(%(width)s::interval, p.materialized_until)) AS hi
            FROM rollup_dirty d, rpm.rollup_progress p
            WHERE d.resolution = %(finer)s
        ) clipped
        WHERE lo < hi
    ) ordered
) numbered
GROUP BY patient_id, metric_id, range_number;

-- name: analyze_dirty
ANALYZE rollup_dirty;

-- name: clear_1m
DELETE FROM rpm.rollup_1m m
USING rollup_dirty d
WHERE d.resolution = '1m' AND m.patient_id = d.patient_id AND m.metric_id = d.metric_id
  AND m.bucket_start >= d.lo AND m.bucket_start < d.hi;

-- name: recompute_1m
INSERT INTO rpm.rollup_1m (bucket_start, patient_id, metric_id, reading_count, value_sum,
                           value_min, value_max, last_value, last_at)
SELECT time_bucket(INTERVAL '1 minute', r.measured_at), r.patient_id, r.metric_id,
       count(*), sum(r.value), min(r.value), max(r.value),
       (max(ARRAY[date_part('epoch', r.measured_at - timestamptz 'epoch'), r.value]))[2],
       max(r.measured_at)
FROM rollup_dirty d
JOIN rpm.readings r
  ON r.patient_id = d.patient_id AND r.metric_id = d.metric_id
 AND r.measured_at >= d.lo AND r.measured_at < d.hi
WHERE d.resolution = '1m'
GROUP BY 1, 2, 3;

-- name: clear_1h
DELETE FROM rpm.rollup_1h h
USING rollup_dirty d
WHERE d.resolution = '1h' AND h.patient_id = d.patient_id AND h.metric_id = d.metric_id
  AND h.bucket_start >= d.lo AND h.bucket_start < d.hi;

-- name: recompute_1h
INSERT INTO rpm.rollup_1h (bucket_start, patient_id, metric_id, reading_count, value_sum,
                           value_min, value_max, last_value, last_at)
SELECT time_bucket(INTERVAL '1 hour', m.bucket_start), m.patient_id, m.metric_id,
       sum(m.reading_count), sum(m.value_sum), min(m.value_min), max(m.value_max),
       (max(ARRAY[date_part('epoch', m.last_at - timestamptz 'epoch'), m.last_value]))[2],
       max(m.last_at)
FROM rollup_dirty d
JOIN rpm.rollup_1m m
  ON m.patient_id = d.patient_id AND m.metric_id = d.metric_id
 AND m.bucket_start >= d.lo AND m.bucket_start < d.hi
WHERE d.resolution = '1h'
GROUP BY 1, 2, 3;

-- name: clear_1d
DELETE FROM rpm.rollup_1d x
USING rollup_dirty d
WHERE d.resolution = '1d' AND x.patient_id = d.patient_id AND x.metric_id = d.metric_id
  AND x.bucket_start >= d.lo AND x.bucket_start < d.hi;

-- name: recompute_1d
INSERT INTO rpm.rollup_1d (bucket_start, patient_id, metric_id, reading_count, value_sum,
                           value_min, value_max, last_value, last_at)
SELECT time_bucket(INTERVAL '1 day', h.bucket_start), h.patient_id, h.metric_id,
       sum(h.reading_count), sum(h.value_sum), min(h.value_min), max(h.value_max),
       (max(ARRAY[date_part('epoch', h.last_at - timestamptz 'epoch'), h.last_value]))[2],
       max(h.last_at)
FROM rollup_dirty d
JOIN rpm.rollup_1h h
  ON h.patient_id = d.patient_id AND h.metric_id = d.metric_id
 AND h.bucket_start >= d.lo AND h.bucket_start < d.hi
WHERE d.resolution = '1d'
GROUP BY 1, 2, 3;

-- name: refresh_cagg_1m
-- TSL edition. Each refresh recomputes only what TimescaleDB's own invalidation log marks
-- inside the window, plus new buckets; it commits internally, so it runs outside a transaction.
CALL refresh_continuous_aggregate('rpm.readings_1m', %(start)s::timestamptz, %(end)s::timestamptz);

-- name: refresh_cagg_1h
CALL refresh_continuous_aggregate('rpm.readings_1h', %(start)s::timestamptz, %(end)s::timestamptz);

-- name: refresh_cagg_1d
CALL refresh_continuous_aggregate('rpm.readings_1d', %(start)s::timestamptz, %(end)s::timestamptz);

-- name: cagg_watermark
-- TSL edition: the 1-minute continuous aggregate's watermark (what is materialized), for the
-- report; NULL before its first refresh (TimescaleDB then reports the smallest timestamptz).
SELECT CASE WHEN at >= '0001-01-01 00:00:00+00' THEN at END
FROM (
    SELECT _timescaledb_functions.to_timestamp(
               _timescaledb_functions.cagg_watermark(mat_hypertable_id)) AS at
    FROM _timescaledb_catalog.continuous_agg
    WHERE user_view_schema = 'rpm' AND user_view_name = 'readings_1m'
) watermark;

-- name: misaligned_policies
-- TSL edition: the refresh policies whose window does not follow the settings (start_offset:
-- the raw horizon less jobs.rollups.POLICY_MARGIN, so a policy never refreshes a bucket before
-- the refresher's day-aligned horizon start). A policy is found by the materialisation
-- hypertable id in its config, not by the jobs view's hypertable columns: TimescaleDB 2.20
-- changed those from the materialisation hypertable to the aggregate's own name, and a join on
-- them silently matched nothing.
SELECT quote_ident(c.user_view_schema) || '.' || quote_ident(c.user_view_name) AS view,
       j.schedule_interval
FROM _timescaledb_catalog.continuous_agg c
JOIN timescaledb_information.jobs j
  ON (j.config ->> 'mat_hypertable_id')::integer = c.mat_hypertable_id
WHERE c.user_view_schema = 'rpm'
  AND j.proc_name = 'policy_refresh_continuous_aggregate'
  AND ((j.config ->> 'start_offset')::interval IS DISTINCT FROM %(start_offset)s::interval
       OR (j.config ->> 'end_offset')::interval IS DISTINCT FROM %(lag)s::interval)
ORDER BY c.mat_hypertable_id;

-- name: remove_refresh_policy
-- With add_refresh_policy, in one transaction: how a policy's window is changed. alter_job
-- cannot do it on TimescaleDB 2.22 for a hierarchical aggregate (1h, 1d): its overlap check
-- counts the policy being altered and refuses ("multiple refresh policies are not supported").
SELECT remove_continuous_aggregate_policy(%(view)s::regclass);

-- name: add_refresh_policy
-- The other options keep their defaults, as migration 0004 created the policies.
SELECT add_continuous_aggregate_policy(%(view)s::regclass,
                                       start_offset => %(start_offset)s::interval,
                                       end_offset => %(end_offset)s::interval,
                                       schedule_interval => %(schedule_interval)s::interval);
