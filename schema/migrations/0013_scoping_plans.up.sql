-- Scoping functions planned once per session (same answers as migration 0006, less work).
-- Every clinician read goes through rpm.visible_patient_ids() (the RLS policies' hashed
-- subplan), rpm.can_see_patient() or rpm.latest_vitals(). As SQL functions that cannot be
-- inlined (SECURITY DEFINER), their bodies were parsed and planned again in every statement
-- (0.7 ms for the visible set, 1.5 ms for latest vitals over the readings chunks: more than
-- running them). In PL/pgSQL the plans are cached per session; the plans do not depend on the
-- arguments (index probes), so the generic plan is forced.
-- - visible_patient_ids: the admin branch and the clinician branch are chosen once instead of
--   both being planned (an admin sees every patient, a superset of any team's).
-- - can_see_patient: one patient's membership is an index probe, not the whole visible set.
-- - latest_vitals: the requested patients are checked against the visible set once, before the
--   per-metric probes.

CREATE OR REPLACE FUNCTION rpm.visible_patient_ids() RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    IF rpm.acting_is_admin() THEN
        RETURN QUERY SELECT p.patient_id FROM rpm.patients p;
    ELSIF rpm.acting_subject() IS NOT NULL AND 'clinician' = ANY (rpm.acting_roles()) THEN
        -- The acting clinician's live teams first (a handful of rows), then their patients.
        RETURN QUERY
        WITH teams AS MATERIALIZED (
            SELECT t.care_team_id
            FROM rpm.clinicians c
            JOIN rpm.care_team_members m ON m.clinician_id = c.clinician_id
            JOIN rpm.care_teams t ON t.care_team_id = m.care_team_id AND t.deleted_at IS NULL
            WHERE c.subject = rpm.acting_subject()
              AND c.deleted_at IS NULL
              AND m.care_team_id::text = ANY (
                  string_to_array(nullif(current_setting('rpm.acting_care_teams', true), ''),
                                  ','))
        )
        SELECT DISTINCT ctp.patient_id
        FROM teams
        JOIN rpm.care_team_patients ctp ON ctp.care_team_id = teams.care_team_id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION rpm.can_see_patient(p_patient uuid) RETURNS boolean
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    IF p_patient IS NULL THEN
        RETURN NULL;  -- as NULL IN (...) was
    ELSIF rpm.acting_is_admin() THEN
        RETURN EXISTS (SELECT FROM rpm.patients p WHERE p.patient_id = p_patient);
    ELSIF rpm.acting_subject() IS NOT NULL AND 'clinician' = ANY (rpm.acting_roles()) THEN
        RETURN EXISTS (
            SELECT
            FROM rpm.care_team_patients ctp
            JOIN rpm.care_teams t ON t.care_team_id = ctp.care_team_id AND t.deleted_at IS NULL
            JOIN rpm.care_team_members m ON m.care_team_id = ctp.care_team_id
            JOIN rpm.clinicians c ON c.clinician_id = m.clinician_id
            WHERE ctp.patient_id = p_patient
              AND c.subject = rpm.acting_subject()
              AND c.deleted_at IS NULL
              AND m.care_team_id::text = ANY (
                  string_to_array(nullif(current_setting('rpm.acting_care_teams', true), ''),
                                  ',')));
    END IF;
    RETURN false;
END
$$;

-- Newest reading per metric for each requested patient the acting user may see. "Latest" is the
-- newest measurement time, never the last received; one index probe per (patient, metric).
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
