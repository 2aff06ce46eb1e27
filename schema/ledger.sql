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

-- The idempotent layer (schema/idempotent): every application, never updated. The layer is
-- current while the newest row has the checksum of the layer on disk and no migration was
-- applied or reverted since (its migration_event is still the newest event of migration_log).
CREATE TABLE IF NOT EXISTS rpm_meta.layer_applications (
    application_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checksum          text NOT NULL,  -- SHA-256 over the layer's file names and contents
    files             text[] NOT NULL,  -- in the order they ran
    migration_version integer NOT NULL,  -- the newest migration, at which it was applied
    migration_event   bigint NOT NULL,  -- newest rpm_meta.migration_log event_id at the time
    applied_at        timestamptz NOT NULL DEFAULT now(),
    applied_by        text NOT NULL DEFAULT current_user,
    execution_ms      integer NOT NULL
);
