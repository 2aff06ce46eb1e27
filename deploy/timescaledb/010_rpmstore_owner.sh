#!/usr/bin/env bash
# First-initialisation script for the compose `timescaledb` service (docker-entrypoint-initdb.d).
#
# Runs once, when the data volume is empty, after the image's 000_install_timescaledb.sh and
# 001_timescaledb_tune.sh: creates the LOGIN roles `rpmstore` and `rpmstore_api`, makes the first the owner of database
# rpmstore (migrations then run as that role, never as the superuser) and ensures the
# timescaledb extension there. Changing RPMSTORE_DB_PASSWORD later needs an ALTER ROLE.
#
# The entrypoint sources *.sh files that are not executable and runs those that are, so this
# script works either way: no `exit`, no change to shell options, the status is the function's.

rpmstore_create_owner() {
    : "${RPMSTORE_DB_PASSWORD:?is not set: run rpmstore db up, or copy .env.example to .env}"
    : "${RPMSTORE_API_DB_PASSWORD:?is not set: run rpmstore db up, or copy .env.example to .env}"
    local secret
    for secret in "$POSTGRES_PASSWORD" "$RPMSTORE_DB_PASSWORD" "$RPMSTORE_API_DB_PASSWORD"; do
        if [ "$secret" = "change-me" ]; then
            echo "refusing to initialise: a database password is still the .env.example placeholder" >&2
            return 1
        fi
    done

    # The password travels as a psql variable and reaches the server as a quoted literal (:'pw');
    # the quoted heredoc keeps the shell from ever putting it into the SQL text.
    psql --no-psqlrc --no-password -v ON_ERROR_STOP=1 \
        --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        -v pw="$RPMSTORE_DB_PASSWORD" -v api_pw="$RPMSTORE_API_DB_PASSWORD" <<'EOSQL'
CREATE ROLE rpmstore LOGIN PASSWORD :'pw';
-- The clinician API's role: owns nothing, no BYPASSRLS (migration 0006 grants it what it needs).
CREATE ROLE rpmstore_api LOGIN PASSWORD :'api_pw';
ALTER DATABASE rpmstore OWNER TO rpmstore;
\connect rpmstore
CREATE EXTENSION IF NOT EXISTS timescaledb;
EOSQL
}

rpmstore_create_owner
