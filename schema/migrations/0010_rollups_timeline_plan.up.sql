-- rpm.vitals_timeline (0004) without parallel workers and with a generic plan.
-- A timeline reads a few rows of one patient, but the planner cannot see that the on-the-fly
-- tail of the rollup views (readings after the watermark) is small and starts parallel workers,
-- which cost more (about 15 ms) than the whole query. Planning the nested rollup views and the
-- chunks of the readings hypertable costs more than running them (2-3 ms), and the plan does
-- not depend on the arguments (index ranges on patient, metric and time): plan once a session.
ALTER FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    SET plan_cache_mode = force_generic_plan;
