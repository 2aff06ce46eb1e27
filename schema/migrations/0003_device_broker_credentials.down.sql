ALTER TABLE rpm.devices DROP COLUMN broker_password_hash;
