DO $covering$
BEGIN
    IF current_setting('timescaledb.license') = 'timescale' THEN
        DROP INDEX _timescaledb_internal.readings_1m_key;
        CREATE INDEX readings_1m_key ON rpm.readings_1m (patient_id, metric_id, bucket_start);
        DROP INDEX _timescaledb_internal.readings_1h_key;
        CREATE INDEX readings_1h_key ON rpm.readings_1h (patient_id, metric_id, bucket_start);
        DROP INDEX _timescaledb_internal.readings_1d_key;
        CREATE INDEX readings_1d_key ON rpm.readings_1d (patient_id, metric_id, bucket_start);
    ELSE
        ALTER TABLE rpm.rollup_1m DROP CONSTRAINT rollup_1m_pkey;
        ALTER TABLE rpm.rollup_1m ADD CONSTRAINT rollup_1m_pkey
            PRIMARY KEY (patient_id, metric_id, bucket_start);
        ALTER TABLE rpm.rollup_1h DROP CONSTRAINT rollup_1h_pkey;
        ALTER TABLE rpm.rollup_1h ADD CONSTRAINT rollup_1h_pkey
            PRIMARY KEY (patient_id, metric_id, bucket_start);
        ALTER TABLE rpm.rollup_1d DROP CONSTRAINT rollup_1d_pkey;
        ALTER TABLE rpm.rollup_1d ADD CONSTRAINT rollup_1d_pkey
            PRIMARY KEY (patient_id, metric_id, bucket_start);
    END IF;
END
$covering$;
