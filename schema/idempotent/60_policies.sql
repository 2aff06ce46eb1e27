-- Idempotent layer, 60: row-level security.
-- Re-applied as a whole after the numbered migrations whenever the layer changed or migrations
-- moved (schema/migrate.py): every statement must be safe to run again, at the newest migration.

-- A policy cannot be replaced in place: each is dropped and created again in the layer's one
-- transaction, so no other session ever sees a table without it. ENABLE ROW LEVEL SECURITY is
-- a no-op when already enabled. Removing a policy means adding its DROP POLICY IF EXISTS here.

-- ---------------------------------------------------------------------------------------------
-- Row-level security on every table that holds patient data. The owner (migrations, ingest,
-- the alert engine, retention) is not subject to it: those run as trusted jobs, not as users.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE rpm.patients ENABLE ROW LEVEL SECURITY;
-- Admins see and register every patient. The admin test comes first and outside the function:
-- a row inserted by this statement is not yet in the function's snapshot.
DROP POLICY IF EXISTS patients_visible ON rpm.patients;
CREATE POLICY patients_visible ON rpm.patients
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.patient_identities ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS patient_identities_visible ON rpm.patient_identities;
CREATE POLICY patient_identities_visible ON rpm.patient_identities
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.patient_identifiers ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS patient_identifiers_visible ON rpm.patient_identifiers;
CREATE POLICY patient_identifiers_visible ON rpm.patient_identifiers
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.care_team_patients ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS care_team_patients_visible ON rpm.care_team_patients;
CREATE POLICY care_team_patients_visible ON rpm.care_team_patients FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
DROP POLICY IF EXISTS care_team_patients_admin ON rpm.care_team_patients;
CREATE POLICY care_team_patients_admin ON rpm.care_team_patients
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.care_teams ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS care_teams_read ON rpm.care_teams;
CREATE POLICY care_teams_read ON rpm.care_teams FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
DROP POLICY IF EXISTS care_teams_admin ON rpm.care_teams;
CREATE POLICY care_teams_admin ON rpm.care_teams
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.clinicians ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS clinicians_read ON rpm.clinicians;
CREATE POLICY clinicians_read ON rpm.clinicians FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
DROP POLICY IF EXISTS clinicians_admin ON rpm.clinicians;
CREATE POLICY clinicians_admin ON rpm.clinicians
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.care_team_members ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS care_team_members_read ON rpm.care_team_members;
CREATE POLICY care_team_members_read ON rpm.care_team_members FOR SELECT
    USING (rpm.acting_subject() IS NOT NULL);
DROP POLICY IF EXISTS care_team_members_admin ON rpm.care_team_members;
CREATE POLICY care_team_members_admin ON rpm.care_team_members
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

-- Devices are not patient data, but only admins manage them; clinicians see the devices of
-- their patients through assignments.
ALTER TABLE rpm.devices ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS devices_admin ON rpm.devices;
CREATE POLICY devices_admin ON rpm.devices
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());
DROP POLICY IF EXISTS devices_of_visible_patients ON rpm.devices;
CREATE POLICY devices_of_visible_patients ON rpm.devices FOR SELECT
    USING (device_id IN (SELECT a.device_id FROM rpm.device_assignments a));

ALTER TABLE rpm.device_assignments ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS device_assignments_visible ON rpm.device_assignments;
CREATE POLICY device_assignments_visible ON rpm.device_assignments FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
DROP POLICY IF EXISTS device_assignments_admin ON rpm.device_assignments;
CREATE POLICY device_assignments_admin ON rpm.device_assignments
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alert_rules ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS alert_rules_read ON rpm.alert_rules;
CREATE POLICY alert_rules_read ON rpm.alert_rules FOR SELECT
    USING (rpm.acting_subject() IS NOT NULL);
DROP POLICY IF EXISTS alert_rules_admin ON rpm.alert_rules;
CREATE POLICY alert_rules_admin ON rpm.alert_rules
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alert_rule_overrides ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS alert_rule_overrides_visible ON rpm.alert_rule_overrides;
CREATE POLICY alert_rule_overrides_visible ON rpm.alert_rule_overrides FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
DROP POLICY IF EXISTS alert_rule_overrides_admin ON rpm.alert_rule_overrides;
CREATE POLICY alert_rule_overrides_admin ON rpm.alert_rule_overrides
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alerts ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS alerts_visible ON rpm.alerts;
CREATE POLICY alerts_visible ON rpm.alerts
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()))
    WITH CHECK (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.alert_events ENABLE ROW LEVEL SECURITY;
-- The subquery on rpm.alerts is itself filtered by alerts_visible.
DROP POLICY IF EXISTS alert_events_visible ON rpm.alert_events;
CREATE POLICY alert_events_visible ON rpm.alert_events
    USING (alert_id IN (SELECT a.alert_id FROM rpm.alerts a))
    WITH CHECK (alert_id IN (SELECT a.alert_id FROM rpm.alerts a)
                AND actor = rpm.acting_subject());

-- The audit trail: anyone acting may append a record about themselves; only admins read it.
ALTER TABLE rpm.audit_log ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS audit_log_append ON rpm.audit_log;
CREATE POLICY audit_log_append ON rpm.audit_log FOR INSERT
    WITH CHECK (actor_subject = rpm.acting_subject());
DROP POLICY IF EXISTS audit_log_admin_read ON rpm.audit_log;
CREATE POLICY audit_log_admin_read ON rpm.audit_log FOR SELECT USING (rpm.acting_is_admin());
