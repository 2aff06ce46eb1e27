-- Care-team scoping enforced by PostgreSQL itself, for the clinician API's role.
--
-- The API connects as rpmstore_api: a LOGIN role created by provisioning (rpmstore db up, the
-- compose init script, the test suite), never the owner of anything, without BYPASSRLS and not a
-- superuser (the API refuses to start otherwise). Per transaction it states who is acting:
--   set_config('rpm.acting_subject', <JWT sub>, true)
--   set_config('rpm.acting_roles', 'clinician,admin', true)
--   set_config('rpm.acting_care_teams', '<uuid>,<uuid>', true)
-- and row-level security lets it see only what that user may see:
-- * a clinician sees the patients of the care teams that are both in their token and in
--   rpm.care_team_members for their subject (least privilege: a stale token cannot widen it,
--   a stale membership cannot either);
-- * an admin sees every patient (registration, assignment, rules, audit);
-- * anyone else (ops) sees no patient data at all.
-- Readings, rollups and continuous aggregates are never granted to the role: TimescaleDB chunks
-- do not inherit RLS policies and continuous aggregates cannot be built on RLS tables, so the
-- time series is read only through the SECURITY DEFINER functions below, which check the same
-- predicate first. Chunks then carry no grant for the role either (they copy the hypertable's).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rpmstore_api') THEN
        RAISE EXCEPTION 'role rpmstore_api does not exist'
            USING HINT = 'create it as a LOGIN role without BYPASSRLS before migrating '
                         '(rpmstore db up and deploy/timescaledb/010_rpmstore_owner.sh do)';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Who is acting (empty outside an API transaction).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION rpm.acting_subject() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT nullif(current_setting('rpm.acting_subject', true), '') $$;

CREATE FUNCTION rpm.acting_roles() RETURNS text[]
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT coalesce(string_to_array(nullif(current_setting('rpm.acting_roles', true), ''), ','),
                   '{}') $$;

CREATE FUNCTION rpm.acting_is_admin() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT rpm.acting_subject() IS NOT NULL AND 'admin' = ANY (rpm.acting_roles()) $$;

-- The patients the acting user may see. SECURITY DEFINER: the API role has no access to the
-- membership tables' rows of other teams, and must not need any.
CREATE FUNCTION rpm.visible_patient_ids() RETURNS SETOF uuid
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

CREATE FUNCTION rpm.can_see_patient(p_patient uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT p_patient IN (SELECT rpm.visible_patient_ids()) $$;

-- ---------------------------------------------------------------------------------------------
-- Row-level security on every table that holds patient data. The owner (migrations, ingest,
-- the alert engine, retention) is not subject to it: those run as trusted jobs, not as users.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE rpm.patients ENABLE ROW LEVEL SECURITY;
-- Admins see and register every patient. The admin test comes first and outside the function:
-- a row inserted by this statement is not yet in the function's snapshot.
CREATE POLICY patients_visible ON rpm.patients
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.patient_identities ENABLE ROW LEVEL SECURITY;
CREATE POLICY patient_identities_visible ON rpm.patient_identities
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.patient_identifiers ENABLE ROW LEVEL SECURITY;
CREATE POLICY patient_identifiers_visible ON rpm.patient_identifiers
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.care_team_patients ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_team_patients_visible ON rpm.care_team_patients FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
CREATE POLICY care_team_patients_admin ON rpm.care_team_patients
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.care_teams ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_teams_read ON rpm.care_teams FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY care_teams_admin ON rpm.care_teams
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.clinicians ENABLE ROW LEVEL SECURITY;
CREATE POLICY clinicians_read ON rpm.clinicians FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY clinicians_admin ON rpm.clinicians
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.care_team_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_team_members_read ON rpm.care_team_members FOR SELECT
    USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY care_team_members_admin ON rpm.care_team_members
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

-- Devices are not patient data, but only admins manage them; clinicians see the devices of
-- their patients through assignments.
ALTER TABLE rpm.devices ENABLE ROW LEVEL SECURITY;
CREATE POLICY devices_admin ON rpm.devices
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());
CREATE POLICY devices_of_visible_patients ON rpm.devices FOR SELECT
    USING (device_id IN (SELECT a.device_id FROM rpm.device_assignments a));

ALTER TABLE rpm.device_assignments ENABLE ROW LEVEL SECURITY;
CREATE POLICY device_assignments_visible ON rpm.device_assignments FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
CREATE POLICY device_assignments_admin ON rpm.device_assignments
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alert_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY alert_rules_read ON rpm.alert_rules FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY alert_rules_admin ON rpm.alert_rules
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alert_rule_overrides ENABLE ROW LEVEL SECURITY;
CREATE POLICY alert_rule_overrides_visible ON rpm.alert_rule_overrides FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
CREATE POLICY alert_rule_overrides_admin ON rpm.alert_rule_overrides
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY alerts_visible ON rpm.alerts
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()))
    WITH CHECK (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.alert_events ENABLE ROW LEVEL SECURITY;
-- The subquery on rpm.alerts is itself filtered by alerts_visible.
CREATE POLICY alert_events_visible ON rpm.alert_events
    USING (alert_id IN (SELECT a.alert_id FROM rpm.alerts a))
    WITH CHECK (alert_id IN (SELECT a.alert_id FROM rpm.alerts a)
                AND actor = rpm.acting_subject());

-- The audit trail: anyone acting may append a record about themselves; only admins read it.
ALTER TABLE rpm.audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_log_append ON rpm.audit_log FOR INSERT
    WITH CHECK (actor_subject = rpm.acting_subject());
CREATE POLICY audit_log_admin_read ON rpm.audit_log FOR SELECT USING (rpm.acting_is_admin());

-- ---------------------------------------------------------------------------------------------
-- Grants. Column lists keep credential hashes unreadable: SELECT on rpm.devices leaves out
-- credential_sha256 and broker_password_hash (admins may write them when registering).
-- ---------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA rpm TO rpmstore_api;
GRANT SELECT ON rpm.metrics, rpm.metric_aliases, rpm.unit_conversions TO rpmstore_api;
GRANT SELECT, INSERT, UPDATE ON rpm.patients, rpm.patient_identities, rpm.patient_identifiers,
    rpm.care_teams, rpm.clinicians, rpm.device_assignments, rpm.alert_rules,
    rpm.alert_rule_overrides TO rpmstore_api;
GRANT SELECT, INSERT, DELETE ON rpm.care_team_members, rpm.care_team_patients TO rpmstore_api;
GRANT SELECT (device_id, kind, manufacturer, model, serial_number, status, created_at,
              updated_at, deleted_at) ON rpm.devices TO rpmstore_api;
GRANT INSERT (kind, manufacturer, model, serial_number, credential_sha256, broker_password_hash)
    ON rpm.devices TO rpmstore_api;
GRANT UPDATE (status) ON rpm.devices TO rpmstore_api;
GRANT SELECT, UPDATE ON rpm.alerts TO rpmstore_api;
GRANT SELECT, INSERT ON rpm.alert_events TO rpmstore_api;
GRANT SELECT, INSERT ON rpm.audit_log TO rpmstore_api;

-- ---------------------------------------------------------------------------------------------
-- The time series, read through scoping functions (owner's rights, the caller's scope).
-- ---------------------------------------------------------------------------------------------
-- Newest reading per metric for each requested patient the acting user may see. "Latest" is the
-- newest measurement time, never the last received; one index probe per (patient, metric).
CREATE FUNCTION rpm.latest_vitals(p_patients uuid[])
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

REVOKE ALL ON FUNCTION rpm.visible_patient_ids(), rpm.can_see_patient(uuid),
    rpm.latest_vitals(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rpm.visible_patient_ids(), rpm.can_see_patient(uuid),
    rpm.latest_vitals(uuid[]) TO rpmstore_api;

-- The timeline of one patient's metric (raw, 1m, 1h, 1d; gaps explicit), for the acting user
-- only. rpm.vitals_timeline reads the rollups (continuous aggregates on TSL), which the API role
-- cannot read and which cannot carry RLS: this function checks the scope first and returns
-- nothing at all for a patient outside it. TimescaleDB's functions live in public.
CREATE FUNCTION rpm.patient_vitals_timeline(
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
