-- Rollups: 1-minute, 1-hour and 1-day aggregates per patient and metric, and one read function.
--
-- Both editions expose the same three relations, rpm.readings_1m, rpm.readings_1h and
-- rpm.readings_1d, with the same columns, and the same "real-time" meaning: materialized buckets
-- below a watermark, aggregated on the fly above it. How they are kept differs:
-- - TSL (community) edition: hierarchical continuous aggregates (1m on the hypertable, 1h on
--   1m, 1d on 1h) with refresh policies, materialized_only = false.
-- - Apache edition: rpmstore's own rollup tables (rpm.rollup_1m/1h/1d), maintained by the
--   refresher (schema/rollups.py) from the invalidations ingest records, behind views that add
--   the not yet materialized tail.
-- The edition is read here, at migrate time, so one migration builds either; a database keeps
-- the objects of the edition it was migrated on.
--
-- Every level stores sum and count (so averages of coarser levels are exact), min, max, and the
-- last value by measurement time with that time. Ties at the same instant (two devices of one
-- patient) go to the larger value, so both editions pick the same reading:
--     last_value = (max(ARRAY[epoch seconds of measured_at, value]))[2]
-- max over a float8 array is parallel-safe and allowed in continuous aggregates; TimescaleDB's
-- last(value, (measured_at, value)) is not (a parallel plan cannot deserialize its anonymous
-- record state). Epoch seconds as float8 keep distinct microseconds distinct and in order
-- (until about the year 2240); they are taken from an interval because continuous aggregates
-- accept only immutable expressions, and date_part on a timestamptz is merely stable.

DO $rollups$
BEGIN
    IF current_setting('timescaledb.license') = 'timescale' THEN
        CREATE MATERIALIZED VIEW rpm.readings_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false,
                  timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 minute', measured_at) AS bucket_start,
               patient_id, metric_id,
               count(*) AS reading_count,
               sum(value) AS value_sum,
               min(value) AS value_min,
               max(value) AS value_max,
               (max(ARRAY[date_part('epoch', measured_at - timestamptz 'epoch'), value]))[2]
                   AS last_value,
               max(measured_at) AS last_at
        FROM rpm.readings
        GROUP BY 1, 2, 3
        WITH NO DATA;
        CREATE INDEX readings_1m_key ON rpm.readings_1m (patient_id, metric_id, bucket_start);

        CREATE MATERIALIZED VIEW rpm.readings_1h
            WITH (timescaledb.continuous, timescaledb.materialized_only = false,
                  timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 hour', bucket_start) AS bucket_start,
               patient_id, metric_id,
               sum(reading_count)::bigint AS reading_count,
               sum(value_sum) AS value_sum,
               min(value_min) AS value_min,
               max(value_max) AS value_max,
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2]
                   AS last_value,
               max(last_at) AS last_at
        FROM rpm.readings_1m
        GROUP BY 1, 2, 3
        WITH NO DATA;
        CREATE INDEX readings_1h_key ON rpm.readings_1h (patient_id, metric_id, bucket_start);

        CREATE MATERIALIZED VIEW rpm.readings_1d
            WITH (timescaledb.continuous, timescaledb.materialized_only = false,
                  timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 day', bucket_start) AS bucket_start,
               patient_id, metric_id,
               sum(reading_count)::bigint AS reading_count,
               sum(value_sum) AS value_sum,
               min(value_min) AS value_min,
               max(value_max) AS value_max,
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2]
                   AS last_value,
               max(last_at) AS last_at
        FROM rpm.readings_1h
        GROUP BY 1, 2, 3
        WITH NO DATA;
        CREATE INDEX readings_1d_key ON rpm.readings_1d (patient_id, metric_id, bucket_start);

        -- start_offset is the raw horizon (RPMSTORE_ROLLUP_RAW_HORIZON, default 30 days): a
        -- refresh never reaches buckets whose raw chunks retention may have dropped. The
        -- refresher (rpmstore rollups refresh) re-aligns these windows with the settings.
        PERFORM add_continuous_aggregate_policy('rpm.readings_1m',
            start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute');
        PERFORM add_continuous_aggregate_policy('rpm.readings_1h',
            start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '5 minutes');
        PERFORM add_continuous_aggregate_policy('rpm.readings_1d',
            start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '15 minutes');
    ELSE
        -- Buckets starting before materialized_until are in the rollup tables (every level:
        -- a coarser bucket is materialized once it ends at or before it). The views aggregate
        -- the rest on the fly. Separate from rpm.rollup_watermark on purpose: the refresher
        -- locks that table exclusively for a moment, and readers must never wait for it.
        CREATE TABLE rpm.rollup_progress (
            singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            materialized_until timestamptz NOT NULL DEFAULT '-infinity',
            updated_at         timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO rpm.rollup_progress DEFAULT VALUES;

        -- Column order puts 8-byte columns first so rows carry no alignment padding.
        CREATE TABLE rpm.rollup_1m (
            bucket_start  timestamptz NOT NULL,
            last_at       timestamptz NOT NULL,
            reading_count bigint NOT NULL CHECK (reading_count > 0),
            value_sum     double precision NOT NULL,
            value_min     double precision NOT NULL,
            value_max     double precision NOT NULL,
            last_value    double precision NOT NULL,
            patient_id    uuid NOT NULL,
            metric_id     smallint NOT NULL,
            PRIMARY KEY (patient_id, metric_id, bucket_start)
        );
        CREATE TABLE rpm.rollup_1h (LIKE rpm.rollup_1m INCLUDING CONSTRAINTS,
                                    PRIMARY KEY (patient_id, metric_id, bucket_start));
        CREATE TABLE rpm.rollup_1d (LIKE rpm.rollup_1m INCLUDING CONSTRAINTS,
                                    PRIMARY KEY (patient_id, metric_id, bucket_start));
        -- Hypertables so retention can later drop old rollups by chunk, like raw readings.
        -- Chunks hold about as many rows as a raw chunk would for minute-level data.
        PERFORM create_hypertable('rpm.rollup_1m', by_range('bucket_start', INTERVAL '28 days'),
                                  create_default_indexes => false);
        PERFORM create_hypertable('rpm.rollup_1h', by_range('bucket_start', INTERVAL '365 days'),
                                  create_default_indexes => false);
        PERFORM create_hypertable('rpm.rollup_1d', by_range('bucket_start', INTERVAL '3650 days'),
                                  create_default_indexes => false);

        -- The same columns, in the same order, as the continuous aggregates of the TSL edition.
        CREATE VIEW rpm.readings_1m AS
        SELECT bucket_start, patient_id, metric_id, reading_count, value_sum, value_min,
               value_max, last_value, last_at
        FROM rpm.rollup_1m
        WHERE bucket_start < (SELECT materialized_until FROM rpm.rollup_progress)
        UNION ALL
        SELECT time_bucket(INTERVAL '1 minute', measured_at), patient_id, metric_id,
               count(*), sum(value), min(value), max(value),
               (max(ARRAY[date_part('epoch', measured_at - timestamptz 'epoch'), value]))[2],
               max(measured_at)
        FROM rpm.readings
        WHERE measured_at >= (SELECT materialized_until FROM rpm.rollup_progress)
        GROUP BY 1, 2, 3;

        CREATE VIEW rpm.readings_1h AS
        SELECT bucket_start, patient_id, metric_id, reading_count, value_sum, value_min,
               value_max, last_value, last_at
        FROM rpm.rollup_1h
        WHERE bucket_start < (SELECT time_bucket(INTERVAL '1 hour', materialized_until)
                              FROM rpm.rollup_progress)
        UNION ALL
        SELECT time_bucket(INTERVAL '1 hour', bucket_start), patient_id, metric_id,
               sum(reading_count)::bigint, sum(value_sum), min(value_min), max(value_max),
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2],
               max(last_at)
        FROM rpm.readings_1m
        WHERE bucket_start >= (SELECT time_bucket(INTERVAL '1 hour', materialized_until)
                               FROM rpm.rollup_progress)
        GROUP BY 1, 2, 3;

        CREATE VIEW rpm.readings_1d AS
        SELECT bucket_start, patient_id, metric_id, reading_count, value_sum, value_min,
               value_max, last_value, last_at
        FROM rpm.rollup_1d
        WHERE bucket_start < (SELECT time_bucket(INTERVAL '1 day', materialized_until)
                              FROM rpm.rollup_progress)
        UNION ALL
        SELECT time_bucket(INTERVAL '1 day', bucket_start), patient_id, metric_id,
               sum(reading_count)::bigint, sum(value_sum), min(value_min), max(value_max),
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2],
               max(last_at)
        FROM rpm.readings_1h
        WHERE bucket_start >= (SELECT time_bucket(INTERVAL '1 day', materialized_until)
                               FROM rpm.rollup_progress)
        GROUP BY 1, 2, 3;
    END IF;
END
$rollups$;

-- One row per bucket in [p_start, p_end) for '1m' | '1h' | '1d', buckets aligned to UTC: every
-- bucket that overlaps the range, each aggregated over its whole bucket, including explicit gap
-- rows (count 0, the rest NULL) where nothing was measured. 'raw' returns the readings
-- themselves (count 1 each, no gap rows), ordered by measurement time.
-- SECURITY INVOKER on purpose: callers get exactly their own access to the rollups; scoping
-- to a care team belongs in a definer function that wraps this one.
CREATE FUNCTION rpm.vitals_timeline(
    p_patient uuid,
    p_metric smallint,
    p_start timestamptz,
    p_end timestamptz,
    p_resolution text
) RETURNS TABLE (
    bucket_start timestamptz,
    count bigint,
    min double precision,
    max double precision,
    avg double precision,
    last double precision,
    last_at timestamptz
)
    LANGUAGE plpgsql STABLE SECURITY INVOKER PARALLEL SAFE AS
$$
#variable_conflict use_column
DECLARE
    -- 24 hours, not 1 day: timestamptz + '1 day' follows the session's time zone across DST.
    width constant interval := CASE p_resolution
        WHEN '1m' THEN INTERVAL '1 minute'
        WHEN '1h' THEN INTERVAL '1 hour'
        WHEN '1d' THEN INTERVAL '24 hours'
    END;
    first_bucket timestamptz;
BEGIN
    IF p_resolution IS DISTINCT FROM 'raw' AND width IS NULL THEN
        RAISE EXCEPTION 'unknown resolution %: expected raw, 1m, 1h or 1d', p_resolution
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT (isfinite(p_start) AND isfinite(p_end)) THEN
        RAISE EXCEPTION 'timeline bounds must be finite times'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_resolution = 'raw' THEN
        RETURN QUERY
        SELECT r.measured_at, 1::bigint, r.value, r.value, r.value, r.value, r.measured_at
        FROM rpm.readings r
        WHERE r.patient_id = p_patient AND r.metric_id = p_metric
          AND r.measured_at >= p_start AND r.measured_at < p_end
        ORDER BY r.measured_at, r.value;
        RETURN;
    END IF;
    first_bucket := time_bucket(width, p_start);
    IF p_resolution = '1m' THEN
        RETURN QUERY
        SELECT g.b, coalesce(v.reading_count, 0), v.value_min, v.value_max,
               v.value_sum / v.reading_count, v.last_value, v.last_at
        FROM generate_series(first_bucket, p_end - INTERVAL '1 microsecond', width) AS g (b)
        LEFT JOIN (
            SELECT * FROM rpm.readings_1m x
            WHERE x.patient_id = p_patient AND x.metric_id = p_metric
              AND x.bucket_start >= first_bucket AND x.bucket_start < p_end
        ) v ON v.bucket_start = g.b
        ORDER BY g.b;
    ELSIF p_resolution = '1h' THEN
        RETURN QUERY
        SELECT g.b, coalesce(v.reading_count, 0), v.value_min, v.value_max,
               v.value_sum / v.reading_count, v.last_value, v.last_at
        FROM generate_series(first_bucket, p_end - INTERVAL '1 microsecond', width) AS g (b)
        LEFT JOIN (
            SELECT * FROM rpm.readings_1h x
            WHERE x.patient_id = p_patient AND x.metric_id = p_metric
              AND x.bucket_start >= first_bucket AND x.bucket_start < p_end
        ) v ON v.bucket_start = g.b
        ORDER BY g.b;
    ELSE
        RETURN QUERY
        SELECT g.b, coalesce(v.reading_count, 0), v.value_min, v.value_max,
               v.value_sum / v.reading_count, v.last_value, v.last_at
        FROM generate_series(first_bucket, p_end - INTERVAL '1 microsecond', width) AS g (b)
        LEFT JOIN (
            SELECT * FROM rpm.readings_1d x
            WHERE x.patient_id = p_patient AND x.metric_id = p_metric
              AND x.bucket_start >= first_bucket AND x.bucket_start < p_end
        ) v ON v.bucket_start = g.b
        ORDER BY g.b;
    END IF;
END
$$;
