-- Migration runner (psycopg placeholders).

-- name: applied
SELECT version, name, checksum, applied_at
FROM rpm_meta.schema_migrations
ORDER BY version;

-- name: ledger_exists
SELECT to_regclass('rpm_meta.schema_migrations') IS NOT NULL;

-- name: record_applied
INSERT INTO rpm_meta.schema_migrations (version, name, checksum, execution_ms)
VALUES (%(version)s, %(name)s, %(checksum)s, %(execution_ms)s);

-- name: record_reverted
DELETE FROM rpm_meta.schema_migrations
WHERE version = %(version)s;

-- name: log_event
INSERT INTO rpm_meta.migration_log (version, name, direction, checksum, execution_ms)
VALUES (%(version)s, %(name)s, %(direction)s, %(checksum)s, %(execution_ms)s);

-- name: try_lock
-- Session-level: held across the per-migration transactions, released on unlock or disconnect.
SELECT pg_try_advisory_lock(%(lock_class)s, %(lock_object)s);

-- name: unlock
SELECT pg_advisory_unlock(%(lock_class)s, %(lock_object)s);

-- name: layer_ledger_exists
SELECT to_regclass('rpm_meta.layer_applications') IS NOT NULL;

-- name: last_layer_application
SELECT checksum, migration_event, applied_at
FROM rpm_meta.layer_applications
ORDER BY application_id DESC
LIMIT 1;

-- name: last_migration_event
SELECT coalesce(max(event_id), 0) FROM rpm_meta.migration_log;

-- name: record_layer_application
INSERT INTO rpm_meta.layer_applications
    (checksum, files, migration_version, migration_event, execution_ms)
SELECT %(checksum)s, %(files)s, %(migration_version)s, coalesce(max(event_id), 0),
       %(execution_ms)s
FROM rpm_meta.migration_log;
