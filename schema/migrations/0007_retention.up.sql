-- Retention with archive and legal hold.
-- Policies say how long each hypertable (and, inside rpm.readings, each metric class) is kept;
-- `rpmstore retention run` archives what is due to Parquet, verifies the archive, records it,
-- copies rows of patients under legal hold aside, and only then drops the chunk. Every run
-- leaves a row in rpm.retention_runs and one ledger entry per chunk or range it considered.

-- Metric classes group catalogue metrics that share a retention period. A metric without a
-- class follows its table's default policy (metric_class NULL).
CREATE TABLE rpm.metric_retention_classes (
    metric_id    smallint PRIMARY KEY REFERENCES rpm.metrics (metric_id),
    metric_class text NOT NULL CHECK (metric_class ~ '^[a-z][a-z0-9_]*$')
);

INSERT INTO rpm.metric_retention_classes (metric_id, metric_class)
VALUES (1, 'vital_signs'), (2, 'vital_signs'), (3, 'vital_signs'), (4, 'vital_signs'),
       (5, 'vital_signs'), (6, 'vital_signs'), (7, 'vital_signs'),
       (8, 'body_measurements'), (9, 'body_measurements'), (10, 'body_measurements'),
       (11, 'glucose'),
       (12, 'activity');

-- One row per hypertable (metric_class NULL: the table's default) and optionally per metric
-- class of a table that has a metric_id column. Targets are named, not referenced: rollup
-- tables may not exist yet (or ever, on a given edition); the planner skips a missing target
-- and says so. Chunks are dropped at the table's longest period; a class kept for less is
-- removed by batched DELETE (after the same archive) from chunks that stay.
CREATE TABLE rpm.retention_policies (
    policy_id        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_schema    name NOT NULL,
    target_table     name NOT NULL,
    metric_class     text CHECK (metric_class ~ '^[a-z][a-z0-9_]*$'),
    keep             interval NOT NULL CHECK (keep > interval '0'),
    kind             text NOT NULL CHECK (kind IN ('raw', 'rollup')),
    -- Raw data whose rollups are not complete for a range is not dropped (pending
    -- invalidations, and the refresher's watermark once rollup tables exist).
    requires_rollups boolean NOT NULL DEFAULT false,
    enabled          boolean NOT NULL DEFAULT true,
    note             text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retention_policies_target_class UNIQUE NULLS NOT DISTINCT
        (target_schema, target_table, metric_class)
);

INSERT INTO rpm.retention_policies (target_schema, target_table, metric_class, keep, kind,
                                    requires_rollups, note)
VALUES ('rpm', 'readings', NULL, interval '90 days', 'raw', true,
        'raw readings; rollups keep the long-term trend'),
       -- Apache edition: rpmstore's rollup hypertables (migration 0004).
       ('rpm', 'rollup_1m', NULL, interval '2 years', 'rollup', false, '1-minute rollups'),
       ('rpm', 'rollup_1h', NULL, interval '10 years', 'rollup', false, 'hourly rollups'),
       ('rpm', 'rollup_1d', NULL, interval '10 years', 'rollup', false, 'daily rollups'),
       -- TSL edition: the continuous aggregates of the same name (views on Apache: skipped).
       ('rpm', 'readings_1m', NULL, interval '2 years', 'rollup', false, '1-minute rollups'),
       ('rpm', 'readings_1h', NULL, interval '10 years', 'rollup', false, 'hourly rollups'),
       ('rpm', 'readings_1d', NULL, interval '10 years', 'rollup', false, 'daily rollups');
CREATE TRIGGER retention_policies_touch BEFORE UPDATE ON rpm.retention_policies
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();

-- Patients whose raw readings must not be destroyed (litigation, investigation, complaint).
-- A hold is released, never deleted: the row stays as the record of who held what and why.
CREATE TABLE rpm.legal_holds (
    hold_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id     uuid NOT NULL REFERENCES rpm.patients (patient_id),
    reason         text NOT NULL CHECK (reason <> ''),
    placed_by      text NOT NULL CHECK (placed_by <> ''),
    placed_at      timestamptz NOT NULL DEFAULT now(),
    released_by    text,
    released_at    timestamptz,
    release_reason text,
    CONSTRAINT legal_holds_release_complete
        CHECK ((released_at IS NULL) = (released_by IS NULL)),
    CONSTRAINT legal_holds_release_after_placement
        CHECK (released_at IS NULL OR released_at >= placed_at)
);
CREATE INDEX legal_holds_active ON rpm.legal_holds (patient_id) WHERE released_at IS NULL;

-- Every retention run (and archive restore): what, when, who, how many rows, outcome.
CREATE TABLE rpm.retention_runs (
    run_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action         text NOT NULL CHECK (action IN ('run', 'restore')),
    operator       text NOT NULL CHECK (operator <> ''),
    as_of          timestamptz NOT NULL,  -- the "now" horizons were measured from
    archive_url    text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    outcome        text NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'succeeded', 'partial', 'failed', 'nothing_due')),
    rows_archived  bigint NOT NULL DEFAULT 0 CHECK (rows_archived >= 0),
    rows_dropped   bigint NOT NULL DEFAULT 0 CHECK (rows_dropped >= 0),
    rows_held      bigint NOT NULL DEFAULT 0 CHECK (rows_held >= 0),
    rows_restored  bigint NOT NULL DEFAULT 0 CHECK (rows_restored >= 0),
    detail         text
);

-- One entry per chunk (or per metric-class range) a run considered: archived, dropped or
-- deleted, skipped (and why) or failed (and why). Restores read the archive locations here.
CREATE TABLE rpm.retention_ledger (
    entry_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        bigint NOT NULL REFERENCES rpm.retention_runs (run_id),
    target_schema name NOT NULL,
    target_table  name NOT NULL,
    chunk         text,  -- schema-qualified chunk name at the time
    metric_class  text,
    metric_ids    smallint[],  -- rows of these metrics only (class deletes); NULL: all rows
    range_start   timestamptz NOT NULL,
    range_end     timestamptz NOT NULL,
    action        text NOT NULL CHECK (action IN ('drop_chunk', 'delete_rows', 'restore')),
    status        text NOT NULL
        CHECK (status IN ('archived', 'dropped', 'deleted', 'skipped', 'failed', 'restored')),
    row_count     bigint NOT NULL DEFAULT 0 CHECK (row_count >= 0),
    rows_held     bigint NOT NULL DEFAULT 0 CHECK (rows_held >= 0),
    archive_uri   text,  -- the Parquet file
    manifest_uri  text,
    file_sha256   text,
    content_checksum text,  -- order-independent sum of row hashes, see queries/retention.sql
    reason        text,  -- why skipped or failed
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retention_ledger_range CHECK (range_start < range_end)
);
CREATE INDEX retention_ledger_run ON rpm.retention_ledger (run_id);
CREATE INDEX retention_ledger_archives ON rpm.retention_ledger (target_schema, target_table, range_start)
    WHERE archive_uri IS NOT NULL;

-- Raw readings of patients under legal hold, copied out of chunks before they were dropped.
-- Same columns as rpm.readings, plus where they came from.
CREATE TABLE rpm.held_readings (
    measured_at        timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    value              double precision NOT NULL,
    batch_id           bigint NOT NULL,
    device_id          uuid NOT NULL,
    patient_id         uuid NOT NULL,
    metric_id          smallint NOT NULL,
    utc_offset_minutes smallint,
    client_reading_id  text,
    held_by_run        bigint NOT NULL REFERENCES rpm.retention_runs (run_id),
    held_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric_id, measured_at)
);
CREATE INDEX held_readings_patient ON rpm.held_readings (patient_id, metric_id, measured_at);

-- The oldest measurement time rpm.readings keeps for a metric (NULL metric: the longest period
-- over all classes, i.e. the table's horizon), as of `p_at`; NULL when no policy applies.
-- Readings older than this are refused at ingest (reason too_old): stored, they would re-create
-- a chunk that the next retention run drops.
CREATE FUNCTION rpm.readings_retention_horizon(
    p_metric_id smallint DEFAULT NULL, p_at timestamptz DEFAULT now()
) RETURNS timestamptz
    LANGUAGE sql STABLE AS
$$
    SELECT p_at - coalesce(
        (SELECT p.keep FROM rpm.retention_policies p
           JOIN rpm.metric_retention_classes c ON c.metric_class = p.metric_class
          WHERE p.target_schema = 'rpm' AND p.target_table = 'readings' AND p.enabled
            AND c.metric_id = p_metric_id),
        (SELECT max(p.keep) FROM rpm.retention_policies p
          WHERE p.target_schema = 'rpm' AND p.target_table = 'readings' AND p.enabled
            AND (p.metric_class IS NULL OR p_metric_id IS NULL)))
$$;
