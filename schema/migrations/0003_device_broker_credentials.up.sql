-- Devices log in to the MQTT broker with their own credentials: username = device id,
-- password = the device's token. The broker needs its own salted hash of the token (Mosquitto's
-- PBKDF2-SHA512 "$7$" format), computed at registration because the token is never stored.
ALTER TABLE rpm.devices
    ADD COLUMN broker_password_hash text
        CONSTRAINT devices_broker_password_hash_format CHECK (broker_password_hash ~ '^\$7\$[0-9]+\$');
