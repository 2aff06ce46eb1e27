DROP INDEX rpm.ingest_quarantine_once;
ALTER TABLE rpm.ingest_quarantine
    DROP CONSTRAINT ingest_quarantine_detail_bounded,
    DROP CONSTRAINT ingest_quarantine_payload,
    ADD COLUMN raw_payload bytea;
UPDATE rpm.ingest_quarantine q
SET raw_payload = p.raw_payload
FROM rpm.ingest_payloads p
WHERE p.payload_sha256 = q.payload_sha256;
ALTER TABLE rpm.ingest_quarantine
    ALTER COLUMN raw_payload SET NOT NULL,
    DROP COLUMN payload_sha256;
DROP TABLE rpm.ingest_payloads;
