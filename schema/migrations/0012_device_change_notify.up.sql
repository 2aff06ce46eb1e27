-- Device changes announced to ingest. Ingesting processes cache each device's status,
-- assignments and token for minutes, not seconds: with the cache expiring every few seconds,
-- a ward of devices that post every minute made almost every request pay three lookups. A
-- change to a device or to its assignments is sent on channel rpm_device_changed (payload:
-- the device id) when its transaction commits, and the caches drop that device at once, so a
-- suspended device or a new assignment is seen immediately instead of within the expiry.
-- Device changes are administrative and rare: NOTIFY's commit-time lock costs nothing here.
CREATE FUNCTION rpm.notify_device_changed() RETURNS trigger
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

CREATE TRIGGER devices_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON rpm.devices
    FOR EACH ROW EXECUTE FUNCTION rpm.notify_device_changed();
CREATE TRIGGER device_assignments_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON rpm.device_assignments
    FOR EACH ROW EXECUTE FUNCTION rpm.notify_device_changed();
