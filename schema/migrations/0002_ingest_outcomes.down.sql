DROP TABLE rpm.rollup_invalidations;
DROP TABLE rpm.rollup_watermark;
ALTER TABLE rpm.ingest_quarantine DROP COLUMN batch_id;
ALTER TABLE rpm.ingest_batches
    DROP COLUMN duplicate_count,
    DROP COLUMN conflict_count,
    DROP COLUMN quarantine_count;
