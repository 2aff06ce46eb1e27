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
CREATE FUNCTION rpm.fhir_patient_readings(
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
