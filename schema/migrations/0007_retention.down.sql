DROP FUNCTION rpm.readings_retention_horizon(smallint, timestamptz);
DROP TABLE rpm.held_readings;
DROP TABLE rpm.retention_ledger;
DROP TABLE rpm.retention_runs;
DROP TABLE rpm.legal_holds;
DROP TABLE rpm.retention_policies;
DROP TABLE rpm.metric_retention_classes;
