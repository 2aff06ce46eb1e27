-- The group committer's statements (asyncpg: $n placeholders). One batch = one transaction:
-- binary COPY straight into the hypertable; if any reading is already stored, that transaction
-- is rolled back and the batch goes, in a new one, through a per-session staging table and a
-- merge on the natural key that classifies duplicates and conflicts. Late readings record
-- the rollup ranges they invalidate; the batch row records the outcome.

-- name: create_stage
-- Temporary and emptied at every COMMIT: a failed or retried batch never leaves rows behind.
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    seq                integer NOT NULL,
    measured_at        timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    value              double precision NOT NULL,
    device_id          uuid NOT NULL,
    patient_id         uuid NOT NULL,
    metric_id          smallint NOT NULL,
    utc_offset_minutes smallint,
    client_reading_id  text
) ON COMMIT DELETE ROWS;

-- name: begin_batch
-- The batch id, and the rollup invalidation threshold (NULL while nothing is rolled up yet).
SELECT nextval(pg_get_serial_sequence('rpm.ingest_batches', 'batch_id')),
       nullif(invalidation_threshold, '-infinity')
FROM rpm.rollup_watermark;

-- name: insert_invalidation
INSERT INTO rpm.rollup_invalidations (patient_id, metric_id, range_start, range_end, batch_id)
VALUES ($1, $2, $3, $4, $5);

-- name: merge_stage
-- ORDER BY seq: within one batch the first copy of a key wins and later copies are classified
-- against it. ON CONFLICT DO NOTHING never overwrites a stored reading.
WITH inserted AS (
    INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, patient_id,
                              metric_id, utc_offset_minutes, client_reading_id)
    SELECT measured_at, received_at, value, $1, device_id, patient_id, metric_id,
           utc_offset_minutes, client_reading_id
    FROM ingest_stage
    ORDER BY seq
    ON CONFLICT (device_id, metric_id, measured_at) DO NOTHING
    RETURNING patient_id, metric_id, measured_at
), invalidated AS (
    INSERT INTO rpm.rollup_invalidations (patient_id, metric_id, range_start, range_end, batch_id)
    SELECT patient_id, metric_id, min(measured_at), max(measured_at), $1
    FROM inserted
    WHERE measured_at < (SELECT invalidation_threshold FROM rpm.rollup_watermark)
    GROUP BY patient_id, metric_id
)
SELECT count(*) FROM inserted;

-- name: classify_not_stored
-- Only run when some staged rows were not inserted: each of them is either an exact repeat
-- of the stored reading (duplicate) or a different value for the same key (conflict).
SELECT seq, stored_value
FROM (
    SELECT s.seq, r.value AS stored_value, s.value AS staged_value,
           r.batch_id = $1
               AND s.seq = min(s.seq) OVER (PARTITION BY s.device_id, s.metric_id, s.measured_at)
               AS is_the_inserted_row
    FROM ingest_stage s
    JOIN rpm.readings r
      ON r.device_id = s.device_id AND r.metric_id = s.metric_id
     AND r.measured_at = s.measured_at
) classified
WHERE NOT is_the_inserted_row
ORDER BY seq;

-- name: insert_batch
-- The batch row, and its alert outbox row ($8..$13: one element per touched series; NULL when
-- the batch stored no readings or the committer writes no outbox): one statement, one round trip.
WITH outbox AS (
    INSERT INTO rpm.alert_outbox (batch_id, patient_ids, metric_ids, range_starts, range_ends,
                                  lows, highs)
    SELECT $1, $8::uuid[], $9::smallint[], $10::bigint[], $11::bigint[],
           $12::double precision[], $13::double precision[]
    WHERE cardinality($8::uuid[]) > 0
)
INSERT INTO rpm.ingest_batches (batch_id, source, ingestor, row_count, duplicate_count,
                                conflict_count, quarantine_count)
OVERRIDING SYSTEM VALUE
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: synchronous_commit
SELECT current_setting('synchronous_commit');

-- name: insert_payloads
-- The raw payloads of the batch's quarantine rows, each kept once: a payload already there (a
-- retry, or another reading of it quarantined earlier) is not written again.
INSERT INTO rpm.ingest_payloads (payload_sha256, raw_payload, first_received_at)
SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::timestamptz[])
ON CONFLICT (payload_sha256) DO NOTHING;

-- name: insert_quarantine
-- The batch's quarantine rows (arrays in ingest.outcomes.QUARANTINE_COLUMNS order, but for the
-- batch's one source and batch id). One statement for the whole batch, as a COPY would be;
-- not a COPY, because a row already quarantined (the same payload, position and reason: a
-- retry) must be skipped, not fail the batch. RETURNING says which rows were new.
INSERT INTO rpm.ingest_quarantine (received_at, source, reason, detail, payload_sha256,
                                   reading_index, claimed_device, topic, batch_id)
SELECT received_at, $2, reason, detail, payload_sha256, reading_index, claimed_device, topic, $9
FROM unnest($1::timestamptz[], $3::text[], $4::text[], $5::bytea[], $6::integer[], $7::text[],
            $8::text[]) AS r(received_at, reason, detail, payload_sha256, reading_index,
                             claimed_device, topic)
ON CONFLICT (payload_sha256, reading_index, reason) DO NOTHING
RETURNING payload_sha256, reading_index, reason;
