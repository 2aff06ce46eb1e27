-- Reverts 0006_access. The rpmstore_api role is cluster-wide and belongs to provisioning: it
-- stays, without any privilege in this database.
REVOKE ALL ON ALL TABLES IN SCHEMA rpm FROM rpmstore_api;
REVOKE ALL ON SCHEMA rpm FROM rpmstore_api;

DROP FUNCTION rpm.patient_vitals_timeline(uuid, smallint, timestamptz, timestamptz, text);
DROP FUNCTION rpm.latest_vitals(uuid[]);

DROP POLICY audit_log_append ON rpm.audit_log;
DROP POLICY audit_log_admin_read ON rpm.audit_log;
ALTER TABLE rpm.audit_log DISABLE ROW LEVEL SECURITY;
DROP POLICY alert_events_visible ON rpm.alert_events;
ALTER TABLE rpm.alert_events DISABLE ROW LEVEL SECURITY;
DROP POLICY alerts_visible ON rpm.alerts;
ALTER TABLE rpm.alerts DISABLE ROW LEVEL SECURITY;
DROP POLICY alert_rule_overrides_visible ON rpm.alert_rule_overrides;
DROP POLICY alert_rule_overrides_admin ON rpm.alert_rule_overrides;
ALTER TABLE rpm.alert_rule_overrides DISABLE ROW LEVEL SECURITY;
DROP POLICY alert_rules_read ON rpm.alert_rules;
DROP POLICY alert_rules_admin ON rpm.alert_rules;
ALTER TABLE rpm.alert_rules DISABLE ROW LEVEL SECURITY;
DROP POLICY device_assignments_visible ON rpm.device_assignments;
DROP POLICY device_assignments_admin ON rpm.device_assignments;
ALTER TABLE rpm.device_assignments DISABLE ROW LEVEL SECURITY;
DROP POLICY devices_admin ON rpm.devices;
DROP POLICY devices_of_visible_patients ON rpm.devices;
ALTER TABLE rpm.devices DISABLE ROW LEVEL SECURITY;
DROP POLICY care_team_members_read ON rpm.care_team_members;
DROP POLICY care_team_members_admin ON rpm.care_team_members;
ALTER TABLE rpm.care_team_members DISABLE ROW LEVEL SECURITY;
DROP POLICY clinicians_read ON rpm.clinicians;
DROP POLICY clinicians_admin ON rpm.clinicians;
ALTER TABLE rpm.clinicians DISABLE ROW LEVEL SECURITY;
DROP POLICY care_teams_read ON rpm.care_teams;
DROP POLICY care_teams_admin ON rpm.care_teams;
ALTER TABLE rpm.care_teams DISABLE ROW LEVEL SECURITY;
DROP POLICY care_team_patients_visible ON rpm.care_team_patients;
DROP POLICY care_team_patients_admin ON rpm.care_team_patients;
ALTER TABLE rpm.care_team_patients DISABLE ROW LEVEL SECURITY;
DROP POLICY patient_identifiers_visible ON rpm.patient_identifiers;
ALTER TABLE rpm.patient_identifiers DISABLE ROW LEVEL SECURITY;
DROP POLICY patient_identities_visible ON rpm.patient_identities;
ALTER TABLE rpm.patient_identities DISABLE ROW LEVEL SECURITY;
DROP POLICY patients_visible ON rpm.patients;
ALTER TABLE rpm.patients DISABLE ROW LEVEL SECURITY;

DROP FUNCTION rpm.can_see_patient(uuid);
DROP FUNCTION rpm.visible_patient_ids();
DROP FUNCTION rpm.acting_is_admin();
DROP FUNCTION rpm.acting_roles();
DROP FUNCTION rpm.acting_subject();
