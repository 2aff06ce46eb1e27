-- Back to migration 0006's SQL-language scoping functions (planned in every statement).

CREATE OR REPLACE FUNCTION rpm.visible_patient_ids() RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
    SELECT p.patient_id
    FROM rpm.patients p
    WHERE rpm.acting_is_admin()
    UNION
    SELECT ctp.patient_id
    FROM rpm.clinicians c
    JOIN rpm.care_team_members m ON m.clinician_id = c.clinician_id
    JOIN rpm.care_teams t ON t.care_team_id = m.care_team_id AND t.deleted_at IS NULL
    JOIN rpm.care_team_patients ctp ON ctp.care_team_id = m.care_team_id
    WHERE c.subject = rpm.acting_subject()
      AND c.deleted_at IS NULL
      AND 'clinician' = ANY (rpm.acting_roles())
      AND m.care_team_id::text = ANY (
          string_to_array(nullif(current_setting('rpm.acting_care_teams', true), ''), ','))
$$;

CREATE OR REPLACE FUNCTION rpm.can_see_patient(p_patient uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT p_patient IN (SELECT rpm.visible_patient_ids()) $$;

CREATE OR REPLACE FUNCTION rpm.latest_vitals(p_patients uuid[])
    RETURNS TABLE (patient_id uuid, metric_id smallint, measured_at timestamptz,
                   value double precision, utc_offset_minutes smallint, device_id uuid,
                   received_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
    SELECT v.patient_id, m.metric_id, r.measured_at, r.value, r.utc_offset_minutes, r.device_id,
           r.received_at
    FROM (SELECT DISTINCT unnest(p_patients) AS patient_id) v
    CROSS JOIN rpm.metrics m
    CROSS JOIN LATERAL (
        SELECT rd.measured_at, rd.value, rd.utc_offset_minutes, rd.device_id, rd.received_at
        FROM rpm.readings rd
        WHERE rd.patient_id = v.patient_id AND rd.metric_id = m.metric_id
        ORDER BY rd.measured_at DESC
        LIMIT 1
    ) r
    WHERE v.patient_id IN (SELECT rpm.visible_patient_ids())
$$;
