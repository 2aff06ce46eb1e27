-- Each raw payload kept once, however many of its readings are quarantined.
--
-- Every quarantine row held the whole raw payload: one 254 kB payload of 1,000 readings with
-- unknown metrics wrote 1,000 copies (about 85 MB of table and 87 MB of WAL, some 330 times
-- the bytes received), so any device with a valid token could fill the disk. The bytes now
-- live in rpm.ingest_payloads, once per content (keyed by their SHA-256), and each quarantine
-- row references them with a bounded detail. The same key makes quarantining idempotent: a
-- retried payload has the same hash, so its rejected readings (payload, position, reason) are
-- recognised instead of quarantined again.
CREATE TABLE rpm.ingest_payloads (
    payload_sha256    bytea PRIMARY KEY CHECK (octet_length(payload_sha256) = 32),
    raw_payload       bytea NOT NULL,  -- exactly the bytes received
    first_received_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO rpm.ingest_payloads (payload_sha256, raw_payload, first_received_at)
SELECT sha256(raw_payload), raw_payload, min(received_at)
FROM rpm.ingest_quarantine
GROUP BY raw_payload;

ALTER TABLE rpm.ingest_quarantine ADD COLUMN payload_sha256 bytea;
UPDATE rpm.ingest_quarantine
SET payload_sha256 = sha256(raw_payload), detail = left(detail, 1000);

-- Rows a retry quarantined again before this migration: the earliest of each is kept.
DELETE FROM rpm.ingest_quarantine later
USING rpm.ingest_quarantine earlier
WHERE later.payload_sha256 = earlier.payload_sha256
  AND later.reading_index IS NOT DISTINCT FROM earlier.reading_index
  AND later.reason = earlier.reason
  AND later.quarantine_id > earlier.quarantine_id;

ALTER TABLE rpm.ingest_quarantine
    DROP COLUMN raw_payload,
    ALTER COLUMN payload_sha256 SET NOT NULL,
    ADD CONSTRAINT ingest_quarantine_payload
        FOREIGN KEY (payload_sha256) REFERENCES rpm.ingest_payloads,
    ADD CONSTRAINT ingest_quarantine_detail_bounded CHECK (length(detail) <= 1000);

-- One row per rejected reading of a payload (reading_index NULL: the payload refused whole).
CREATE UNIQUE INDEX ingest_quarantine_once
    ON rpm.ingest_quarantine (payload_sha256, reading_index, reason) NULLS NOT DISTINCT;
