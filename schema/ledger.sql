-- The migration ledger. Created by the migration runner itself (idempotently) because it must
-- exist before the first migration runs and survive reverting every migration.
CREATE SCHEMA IF NOT EXISTS rpm_meta;

-- Current state: one row per applied migration.
CREATE TABLE IF NOT EXISTS rpm_meta.schema_migrations (
    version      integer PRIMARY KEY,
    name         text NOT NULL,
    checksum     text NOT NULL,  -- SHA-256 of the .up.sql file as applied
    applied_at   timestamptz NOT NULL DEFAULT now(),
    applied_by   text NOT NULL DEFAULT current_user,
    execution_ms integer NOT NULL
);

-- History: every apply and revert, never updated.
CREATE TABLE IF NOT EXISTS rpm_meta.migration_log (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version      integer NOT NULL,
    name         text NOT NULL,
    direction    text NOT NULL CHECK (direction IN ('up', 'down', 'canonical')),
    checksum     text NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    performed_by text NOT NULL DEFAULT current_user,
    execution_ms integer NOT NULL
);
