-- Idempotent layer, 20: the Apache edition's rollup views.
-- Re-applied as a whole after the numbered migrations whenever the layer changed or migrations
-- moved (schema/migrate.py): every statement must be safe to run again, at the newest migration.

-- Both editions expose rpm.readings_1m, rpm.readings_1h and rpm.readings_1d with the same columns
-- and meaning. TSL edition: continuous aggregates, which cannot be replaced in place, so they
-- stay in the numbered migrations (0004, 0014). Apache edition: rpmstore's rollup tables
-- (migration 0004) behind these views; buckets starting before materialized_until are in the
-- tables (every level: a coarser bucket is materialized once it ends at or before it), the rest
-- is aggregated on the fly.
DO $rollup_views$
BEGIN
    IF current_setting('timescaledb.license') <> 'timescale' THEN
        -- The same columns, in the same order, as the continuous aggregates of the TSL edition.
        CREATE OR REPLACE VIEW rpm.readings_1m AS
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

        CREATE OR REPLACE VIEW rpm.readings_1h AS
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

        CREATE OR REPLACE VIEW rpm.readings_1d AS
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
$rollup_views$;
