DROP FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text);

DO $rollups$
BEGIN
    IF current_setting('timescaledb.license') = 'timescale' THEN
        -- Coarsest first: each continuous aggregate is built on the finer one.
        DROP MATERIALIZED VIEW rpm.readings_1d;
        DROP MATERIALIZED VIEW rpm.readings_1h;
        DROP MATERIALIZED VIEW rpm.readings_1m;
    ELSE
        DROP VIEW rpm.readings_1d;
        DROP VIEW rpm.readings_1h;
        DROP VIEW rpm.readings_1m;
        DROP TABLE rpm.rollup_1d;
        DROP TABLE rpm.rollup_1h;
        DROP TABLE rpm.rollup_1m;
        DROP TABLE rpm.rollup_progress;
    END IF;
END
$rollups$;

-- Nothing consumes invalidations any more: stop ingest from recording them, drop the backlog.
UPDATE rpm.rollup_watermark SET invalidation_threshold = '-infinity', updated_at = now();
DELETE FROM rpm.rollup_invalidations;
