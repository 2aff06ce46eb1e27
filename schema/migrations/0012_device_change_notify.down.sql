DROP TRIGGER device_assignments_notify_changed ON rpm.device_assignments;
DROP TRIGGER devices_notify_changed ON rpm.devices;
DROP FUNCTION rpm.notify_device_changed();
