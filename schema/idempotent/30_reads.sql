-- Idempotent layer, 30: reads of the time series.
-- Re-applied as a whole after the numbered migrations whenever the layer changed or migrations
-- moved (schema/migrate.py): every statement must be safe to run again, at the newest migration.

-- One row per bucket in [p_start, p_end) for '1m' | '1h' | '1d', buckets aligned to UTC: every
-- bucket that overlaps the range, each aggregated over its whole bucket, including explicit gap
-- rows (count 0, the rest NULL) where nothing was measured. 'raw' returns the readings
-- themselves (count 1 each, no gap rows), ordered by measurement time.
-- SECURITY INVOKER on purpose: callers get exactly their own access to the rollups; scoping
-- to a care team belongs in a definer function that wraps this one.
CREATE OR REPLACE FUNCTION rpm.vitals_timeline(
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
    LANGUAGE plpgsql STABLE SECURITY INVOKER PARALLEL SAFE
    -- A timeline reads a few rows of one patient, but the planner cannot see that the
    -- on-the-fly tail of the rollup views is small and starts parallel workers, which cost
    -- more (about 15 ms) than the whole query; planning the nested rollup views and the
    -- readings chunks costs more than running them (2-3 ms), and the plan does not depend on
    -- the arguments (migration 0010).
    SET max_parallel_workers_per_gather = 0
    SET plan_cache_mode = force_generic_plan AS
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

-- The time series for the API role, read through scoping functions (owner's rights, the
-- caller's scope): the role has no grant on rpm.readings or the rollups.
-- Newest reading per metric for each requested patient the acting user may see. "Latest" is the
-- newest measurement time, never the last received; one index probe per (patient, metric). The
-- requested patients are checked against the visible set once, before the per-metric probes;
-- PL/pgSQL with a generic plan, planned once per session (migration 0013).
CREATE OR REPLACE FUNCTION rpm.latest_vitals(p_patients uuid[])
    RETURNS TABLE (patient_id uuid, metric_id smallint, measured_at timestamptz,
                   value double precision, utc_offset_minutes smallint, device_id uuid,
                   received_at timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    RETURN QUERY
    WITH visible AS MATERIALIZED (
        SELECT DISTINCT requested.id AS patient_id
        FROM unnest(p_patients) AS requested (id)
        WHERE requested.id IN (SELECT rpm.visible_patient_ids())
    )
    SELECT v.patient_id, m.metric_id, r.measured_at, r.value, r.utc_offset_minutes,
           r.device_id, r.received_at
    FROM visible v
    CROSS JOIN rpm.metrics m
    CROSS JOIN LATERAL (
        SELECT rd.measured_at, rd.value, rd.utc_offset_minutes, rd.device_id, rd.received_at
        FROM rpm.readings rd
        WHERE rd.patient_id = v.patient_id AND rd.metric_id = m.metric_id
        ORDER BY rd.measured_at DESC
        LIMIT 1
    ) r;
END
$$;
REVOKE ALL ON FUNCTION rpm.latest_vitals(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rpm.latest_vitals(uuid[]) TO rpmstore_api;

-- The timeline of one patient's metric (raw, 1m, 1h, 1d; gaps explicit), for the acting user
-- only. rpm.vitals_timeline reads the rollups (continuous aggregates on TSL), which the API role
-- cannot read and which cannot carry RLS: this function checks the scope first and returns
-- nothing at all for a patient outside it. TimescaleDB's functions live in public.
CREATE OR REPLACE FUNCTION rpm.patient_vitals_timeline(
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
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
BEGIN
    IF rpm.can_see_patient(p_patient) THEN
        RETURN QUERY
        SELECT t.bucket_start, t.count, t.min, t.max, t.avg, t.last, t.last_at
        FROM rpm.vitals_timeline(p_patient, p_metric, p_start, p_end, p_resolution) t;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION rpm.patient_vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    rpm.patient_vitals_timeline(uuid, smallint, timestamptz, timestamptz, text) TO rpmstore_api;

-- FHIR export: one patient's raw readings with their device and UTC offset, for the acting user
-- only. Needed because the API role has no grant on rpm.readings, and the existing scoping
-- function rpm.patient_vitals_timeline returns time and value only (a FHIR Observation also
-- needs the device reference, the device's offset and the client's reading id).
--
-- Rows come in (measured_at, device_id, resource_key) order, keyset-paginated on that key.
-- resource_key groups the two halves of a blood-pressure measurement ('blood_pressure' for
-- bp_systolic and bp_diastolic, the metric code otherwise), so a page never separates the
-- systolic from the diastolic of the same device and time: the export pairs them into one
-- panel Observation (85354-9) and continues after the whole group.
CREATE OR REPLACE FUNCTION rpm.fhir_patient_readings(
    p_patient uuid,
    p_metrics smallint[],  -- NULL: every metric
    p_start timestamptz,   -- inclusive
    p_end timestamptz,     -- exclusive
    p_after_at timestamptz,  -- keyset: the last group of the previous page (NULL: first page)
    p_after_device uuid,
    p_after_key text,
    p_limit integer
) RETURNS TABLE (
    measured_at timestamptz,
    device_id uuid,
    resource_key text,
    metric_id smallint,
    value double precision,
    utc_offset_minutes smallint,
    client_reading_id text
)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF rpm.can_see_patient(p_patient) THEN
        RETURN QUERY
        SELECT r.measured_at, r.device_id, k.resource_key, r.metric_id, r.value,
               r.utc_offset_minutes, r.client_reading_id
        FROM rpm.readings r
        JOIN rpm.metrics m ON m.metric_id = r.metric_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN m.code IN ('bp_systolic', 'bp_diastolic') THEN 'blood_pressure'
                        ELSE m.code END AS resource_key
        ) k
        WHERE r.patient_id = p_patient
          AND r.measured_at >= p_start AND r.measured_at < p_end
          AND (p_metrics IS NULL OR r.metric_id = ANY (p_metrics))
          AND (p_after_at IS NULL
               OR (r.measured_at, r.device_id, k.resource_key)
                  > (p_after_at, p_after_device, p_after_key))
        ORDER BY r.measured_at, r.device_id, k.resource_key, r.metric_id
        LIMIT p_limit;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION
    rpm.fhir_patient_readings(uuid, smallint[], timestamptz, timestamptz, timestamptz, uuid,
                              text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    rpm.fhir_patient_readings(uuid, smallint[], timestamptz, timestamptz, timestamptz, uuid,
                              text, integer)
    TO rpmstore_api;
