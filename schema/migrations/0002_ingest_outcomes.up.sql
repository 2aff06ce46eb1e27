-- Ingest outcomes and rollup invalidations.
-- Every ingest batch records what happened to what it received (stored, duplicate, conflict,
-- quarantined), and readings that land in time ranges already rolled up are recorded so the
-- rollup refresher recomputes exactly those buckets (late and out-of-order data).

ALTER TABLE rpm.ingest_batches
    ADD COLUMN duplicate_count  integer NOT NULL DEFAULT 0 CHECK (duplicate_count >= 0),
    ADD COLUMN conflict_count   integer NOT NULL DEFAULT 0 CHECK (conflict_count >= 0),
    ADD COLUMN quarantine_count integer NOT NULL DEFAULT 0 CHECK (quarantine_count >= 0);

ALTER TABLE rpm.ingest_quarantine
    ADD COLUMN batch_id bigint;  -- the ingest batch that quarantined it (lineage)

-- Rows measured before the threshold fall in buckets the refresher already rolled up.
-- The refresher advances it; until then (-infinity) ingest records nothing, like TimescaleDB's
-- own invalidation threshold for continuous aggregates.
CREATE TABLE rpm.rollup_watermark (
    singleton              boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    invalidation_threshold timestamptz NOT NULL DEFAULT '-infinity',
    updated_at             timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rpm.rollup_watermark DEFAULT VALUES;

CREATE TABLE rpm.rollup_invalidations (
    invalidation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id      uuid NOT NULL,
    metric_id       smallint NOT NULL,
    range_start     timestamptz NOT NULL,  -- oldest and newest measured_at of the late rows
    range_end       timestamptz NOT NULL,
    batch_id        bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rollup_invalidations_range CHECK (range_start <= range_end)
);
