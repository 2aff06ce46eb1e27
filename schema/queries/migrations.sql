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
