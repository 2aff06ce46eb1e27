-- name: job_stats
-- TimescaleDB's background jobs in this database and how they fare (every edition has the
-- views; only the TSL edition has rpmstore's policies). A refresh policy is named by its
-- aggregate through the config's mat_hypertable_id: the jobs view's hypertable columns name
-- the materialisation hypertable before 2.20 and the aggregate since. The telemetry job is
-- left out: it fails wherever the network is closed, which says nothing about the data.
-- Seconds are NULL until the job has succeeded once.
SELECT j.job_id,
       j.proc_name::text,
       coalesce(c.user_view_schema || '.' || c.user_view_name,
                j.hypertable_schema || '.' || j.hypertable_name,
                '') AS relation,
       coalesce(s.total_runs, 0) AS total_runs,
       coalesce(s.total_failures, 0) AS total_failures,
       coalesce(s.last_run_status = 'Failed', false) AS last_run_failed,
       extract(epoch FROM now() - s.last_successful_finish)::double precision
           AS seconds_since_success
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s USING (job_id)
LEFT JOIN _timescaledb_catalog.continuous_agg c
  ON c.mat_hypertable_id = (j.config ->> 'mat_hypertable_id')::integer
WHERE j.proc_name <> 'policy_telemetry'
ORDER BY j.job_id
