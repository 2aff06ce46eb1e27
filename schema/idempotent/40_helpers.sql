-- Idempotent layer, 40: helpers of ingest, alerting and retention.
-- Re-applied as a whole after the numbered migrations whenever the layer changed or migrations
-- moved (schema/migrate.py): every statement must be safe to run again, at the newest migration.

-- The patient a device was assigned to at a time (assignments are periods that do not overlap).
CREATE OR REPLACE FUNCTION rpm.patient_for_device_at(p_device_id uuid, p_at timestamptz)
    RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT patient_id
    FROM rpm.device_assignments
    WHERE device_id = p_device_id AND valid_during @> p_at
$$;

-- Whether a value breaches an above/below threshold (strictly: SpO2 exactly 90 does not breach
-- "below 90"). Inlined by the planner; one definition for every alerting statement.
CREATE OR REPLACE FUNCTION rpm.alert_breaches(
    kind text, threshold double precision, value double precision
)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$
    SELECT CASE kind WHEN 'above' THEN value > threshold WHEN 'below' THEN value < threshold END
$$;

-- The advisory lock that serialises alert evaluation for a patient (all of its rules): every
-- evaluator and the missing-data sweep take it before reading or changing that patient's
-- alerts. Patients hash into 256 buckets so one transaction never holds more than 256 advisory
-- locks, however many patients a batch touches (the shared lock table is small); two patients
-- in one bucket only wait for each other. Lock buckets in ascending order to avoid deadlocks.
CREATE OR REPLACE FUNCTION rpm.alert_lock_bucket(patient_id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$
    SELECT (hashtext(patient_id::text) & 255)
$$;

-- The oldest measurement time rpm.readings keeps for a metric (NULL metric: the longest period
-- over all classes, i.e. the table's horizon), as of `p_at`; NULL when no policy applies.
-- Readings older than this are refused at ingest (reason too_old): stored, they would re-create
-- a chunk that the next retention run drops.
CREATE OR REPLACE FUNCTION rpm.readings_retention_horizon(
    p_metric_id smallint DEFAULT NULL, p_at timestamptz DEFAULT now()
) RETURNS timestamptz
    LANGUAGE sql STABLE AS
$$
    SELECT p_at - coalesce(
        (SELECT p.keep FROM rpm.retention_policies p
           JOIN rpm.metric_retention_classes c ON c.metric_class = p.metric_class
          WHERE p.target_schema = 'rpm' AND p.target_table = 'readings' AND p.enabled
            AND c.metric_id = p_metric_id),
        (SELECT max(p.keep) FROM rpm.retention_policies p
          WHERE p.target_schema = 'rpm' AND p.target_table = 'readings' AND p.enabled
            AND (p.metric_class IS NULL OR p_metric_id IS NULL)))
$$;
