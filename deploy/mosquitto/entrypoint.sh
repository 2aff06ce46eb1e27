#!/bin/sh
# Entrypoint of the compose `mosquitto` service: write the password file from the environment,
# then run the broker in the foreground as PID 1 (so SIGTERM saves the persistence file).
#
# The file is rebuilt on every start, so changing a password in .env takes effect on restart.
# Device accounts (username = device id) are provisioned separately, later.
set -eu

: "${MQTT_INGEST_PASSWORD:?is not set: run rpmstore db up, or copy .env.example to .env}"
: "${MQTT_GATEWAY_PASSWORD:?is not set: run rpmstore db up, or copy .env.example to .env}"

for secret in "$MQTT_INGEST_PASSWORD" "$MQTT_GATEWAY_PASSWORD"; do
    if [ "$secret" = "change-me" ]; then
        echo "refusing to start: an MQTT password is still the .env.example placeholder" >&2
        exit 1
    fi
done

passwd_file=/mosquitto/config/passwd

# -c starts a fresh file, -b takes the password as an argument (it may contain any character,
# ':' included, which a plain-text file hashed with -U would not allow). umask 077 keeps the
# file private from its first byte.
umask 077
rm -f "$passwd_file"
mosquitto_passwd -c -b "$passwd_file" rpmstore-ingest "$MQTT_INGEST_PASSWORD"
mosquitto_passwd -b "$passwd_file" rpmstore-gateway "$MQTT_GATEWAY_PASSWORD"

# mosquitto drops to the `mosquitto` user before it reads the password file and writes its data.
chown mosquitto:mosquitto "$passwd_file"
chmod 0600 "$passwd_file"
chown -R mosquitto:mosquitto /mosquitto/data

exec /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
