-- Writing readings (psycopg placeholders).

-- name: insert_batch
INSERT INTO rpm.ingest_batches (source, ingestor, row_count)
VALUES (%(source)s, %(ingestor)s, %(row_count)s)
RETURNING batch_id;

-- name: copy_readings
COPY rpm.readings (measured_at, received_at, value, batch_id, device_id, patient_id, metric_id,
                   utc_offset_minutes, client_reading_id)
FROM STDIN (FORMAT BINARY);
