DROP FUNCTION rpm.rechunk_refuse_change();
DROP TABLE rpm.rechunk_reconciliation;
DROP TABLE rpm.rechunk_lineage;
DROP TABLE rpm.rechunk_chunks;
DROP TABLE rpm.rechunk_runs;
