-- Idempotent layer, 50: trigger functions and triggers.
-- Re-applied as a whole after the numbered migrations whenever the layer changed or migrations
-- moved (schema/migrate.py): every statement must be safe to run again, at the newest migration.

-- Triggers are replaced in place (CREATE OR REPLACE TRIGGER, PostgreSQL 14+): no moment without
-- them, and no window in which a concurrent write skips one.

CREATE OR REPLACE FUNCTION rpm.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION rpm.refuse_audit_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'rpm.audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON rpm.audit_log
    FOR EACH ROW EXECUTE FUNCTION rpm.refuse_audit_change();
CREATE OR REPLACE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON rpm.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION rpm.refuse_audit_change();

-- ---------------------------------------------------------------------------------------------
-- updated_at maintenance.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE TRIGGER patients_touch BEFORE UPDATE ON rpm.patients
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER patient_identities_touch BEFORE UPDATE ON rpm.patient_identities
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER care_teams_touch BEFORE UPDATE ON rpm.care_teams
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER clinicians_touch BEFORE UPDATE ON rpm.clinicians
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER devices_touch BEFORE UPDATE ON rpm.devices
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER device_assignments_touch BEFORE UPDATE ON rpm.device_assignments
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER metrics_touch BEFORE UPDATE ON rpm.metrics
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER alert_rules_touch BEFORE UPDATE ON rpm.alert_rules
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER alert_rule_overrides_touch BEFORE UPDATE ON rpm.alert_rule_overrides
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER alerts_touch BEFORE UPDATE ON rpm.alerts
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE OR REPLACE TRIGGER retention_policies_touch BEFORE UPDATE ON rpm.retention_policies
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();

-- Ingest's device caches drop a changed device (migration 0012).
CREATE OR REPLACE FUNCTION rpm.notify_device_changed() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('rpm_device_changed', OLD.device_id::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('rpm_device_changed', NEW.device_id::text);  -- same payload: folded
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER devices_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON rpm.devices
    FOR EACH ROW EXECUTE FUNCTION rpm.notify_device_changed();
CREATE OR REPLACE TRIGGER device_assignments_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON rpm.device_assignments
    FOR EACH ROW EXECUTE FUNCTION rpm.notify_device_changed();

-- Installed on the live table while the copy runs (and on the new one until finalize): rows are
-- mirrored into the other table by insert triggers only, so an UPDATE, DELETE or TRUNCATE would
-- make the two disagree. Refused with the run's message instead.
CREATE OR REPLACE FUNCTION rpm.rechunk_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION '%: % is refused until the migration is finalized or rolled back',
        TG_ARGV[0], TG_OP
        USING ERRCODE = 'object_in_use';
END
$$;
