ALTER FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    RESET max_parallel_workers_per_gather;
ALTER FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    RESET plan_cache_mode;
