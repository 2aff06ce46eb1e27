-- The alert outbox: what each ingest batch asks the alert engine to evaluate, written in the
-- batch's own transaction. Alert evaluation used to be queued in the ingesting process's memory
-- after COMMIT, so a process killed between an ingest COMMIT and the end of that evaluation lost
-- it. Now the readings and the request to evaluate them commit together or not at all; an
-- alert worker claims rows (FOR UPDATE SKIP LOCKED), evaluates them and deletes them in one
-- transaction, so every committed batch is evaluated exactly once in effect, by whichever
-- worker claims it (evaluation is idempotent besides).
--
-- One row per batch with one array element per (patient, metric) series the batch touched: the
-- oldest and newest measured_at and the lowest and highest value, which lets evaluation skip
-- every rule none of the values can breach. A row per series would cost the ingest path about
-- a hundred index insertions per batch; a row per batch costs one.
-- No foreign key to rpm.ingest_batches: both are written by one statement, and a check per
-- batch on the ingest path buys nothing (batch ids come from the same sequence).
CREATE TABLE rpm.alert_outbox (
    batch_id     bigint PRIMARY KEY,
    patient_ids  uuid[] NOT NULL,
    metric_ids   smallint[] NOT NULL,
    -- microseconds since 1970-01-01 UTC: the ingest path has them as integers already, and
    -- building a datetime per series to send timestamptz[] cost more than the rest of the row
    range_starts bigint[] NOT NULL,
    range_ends   bigint[] NOT NULL,
    lows         double precision[] NOT NULL,
    highs        double precision[] NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_outbox_arrays_align CHECK (
        cardinality(patient_ids) > 0
        AND cardinality(metric_ids) = cardinality(patient_ids)
        AND cardinality(range_starts) = cardinality(patient_ids)
        AND cardinality(range_ends) = cardinality(patient_ids)
        AND cardinality(lows) = cardinality(patient_ids)
        AND cardinality(highs) = cardinality(patient_ids))
);
COMMENT ON TABLE rpm.alert_outbox IS
    'Alert evaluations requested by committed ingest batches; claimed and deleted by alert workers.';
