-- Idempotent layer, 10: who is acting, and which patients they see.
-- Re-applied as a whole after the numbered migrations whenever the layer changed or migrations
-- moved (schema/migrate.py): every statement must be safe to run again, at the newest migration.

-- ---------------------------------------------------------------------------------------------
-- Who is acting (empty outside an API transaction).
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION rpm.acting_subject() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT nullif(current_setting('rpm.acting_subject', true), '') $$;

CREATE OR REPLACE FUNCTION rpm.acting_roles() RETURNS text[]
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT coalesce(string_to_array(nullif(current_setting('rpm.acting_roles', true), ''), ','),
                   '{}') $$;

CREATE OR REPLACE FUNCTION rpm.acting_is_admin() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT rpm.acting_subject() IS NOT NULL AND 'admin' = ANY (rpm.acting_roles()) $$;

-- The patients the acting user may see, and one patient's membership of that set. SECURITY
-- DEFINER: the API role has no access to the membership tables' rows of other teams, and must
-- not need any.
-- Every clinician read goes through rpm.visible_patient_ids() (the RLS policies' hashed
-- subplan), rpm.can_see_patient() or rpm.latest_vitals(). As SQL functions that cannot be
-- inlined (SECURITY DEFINER), their bodies were parsed and planned again in every statement
-- (0.7 ms for the visible set, 1.5 ms for latest vitals over the readings chunks: more than
-- running them). In PL/pgSQL the plans are cached per session; the plans do not depend on the
-- arguments (index probes), so the generic plan is forced (migration 0013).
-- - visible_patient_ids: the admin branch and the clinician branch are chosen once instead of
--   both being planned (an admin sees every patient, a superset of any team's).
-- - can_see_patient: one patient's membership is an index probe, not the whole visible set.
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

REVOKE ALL ON FUNCTION rpm.visible_patient_ids(), rpm.can_see_patient(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rpm.visible_patient_ids(), rpm.can_see_patient(uuid) TO rpmstore_api;
