-- Alerting engine: what the evaluator needs beyond the alert tables of schema v1, and the
-- default rules.
--
-- peak_value: the most extreme breaching value of the alert (highest for 'above', lowest for
-- 'below'), next to last_value, so a clinician sees how bad it got, not just how it ended.
ALTER TABLE rpm.alerts ADD COLUMN peak_value double precision;

-- Alert evaluation runs after the ingest COMMIT, in its own transaction. Ranges whose
-- evaluation could not be completed (the evaluator keeps failing on them, or the process is
-- stopping) are parked here and evaluated again by the sweep, so a failed evaluation is
-- delayed, never lost. Evaluation is idempotent, so evaluating a range twice is harmless.
CREATE TABLE rpm.alert_pending_evaluations (
    pending_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id  uuid NOT NULL,
    metric_id   smallint NOT NULL,
    range_start timestamptz NOT NULL,  -- oldest and newest measured_at of the readings
    range_end   timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    last_error  text,
    CONSTRAINT alert_pending_evaluations_range CHECK (range_start <= range_end)
);

-- Rules by metric: the evaluator looks up the rules of the metrics a batch touched.
CREATE INDEX alert_rules_by_metric ON rpm.alert_rules (metric_id)
    WHERE deleted_at IS NULL;

-- Whether a value breaches an above/below threshold (strictly: SpO2 exactly 90 does not breach
-- "below 90"). Inlined by the planner; one definition for every alerting statement.
CREATE FUNCTION rpm.alert_breaches(kind text, threshold double precision, value double precision)
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
CREATE FUNCTION rpm.alert_lock_bucket(patient_id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$
    SELECT (hashtext(patient_id::text) & 255)
$$;

-- Default rules, in canonical units (see the metric catalogue). Fixed ids, so deployments,
-- tests and overrides can name them. Thresholds are conservative adult defaults; care teams
-- tune them per patient with rpm.alert_rule_overrides. Severities follow the common IoT scale
-- (critical, major, minor, warning); CGM stale-data alarms follow the usual 15 min (warn) and
-- 30 min (urgent) defaults.
INSERT INTO rpm.alert_rules (rule_id, name, metric_id, kind, threshold, sustained_for,
                             missing_after, severity, auto_resolve)
VALUES
    ('a1e7a000-0000-4000-8000-000000000001', 'SpO2 below 90 % for 5 minutes',
     4, 'below', 90, '5 minutes', NULL, 'major', true),
    ('a1e7a000-0000-4000-8000-000000000002', 'SpO2 below 85 %',
     4, 'below', 85, '0', NULL, 'critical', true),
    ('a1e7a000-0000-4000-8000-000000000003', 'Heart rate above 130 /min for 10 minutes',
     1, 'above', 130, '10 minutes', NULL, 'major', true),
    ('a1e7a000-0000-4000-8000-000000000004', 'Heart rate below 40 /min for 5 minutes',
     1, 'below', 40, '5 minutes', NULL, 'major', true),
    ('a1e7a000-0000-4000-8000-000000000005', 'Systolic blood pressure above 180 mm[Hg]',
     5, 'above', 180, '0', NULL, 'critical', true),
    ('a1e7a000-0000-4000-8000-000000000006', 'Systolic blood pressure below 90 mm[Hg]',
     5, 'below', 90, '0', NULL, 'major', true),
    ('a1e7a000-0000-4000-8000-000000000007', 'Diastolic blood pressure above 120 mm[Hg]',
     6, 'above', 120, '0', NULL, 'critical', true),
    ('a1e7a000-0000-4000-8000-000000000008', 'Respiratory rate above 24 /min for 5 minutes',
     3, 'above', 24, '5 minutes', NULL, 'major', true),
    ('a1e7a000-0000-4000-8000-000000000009', 'Body temperature above 38.0 Cel',
     7, 'above', 38.0, '0', NULL, 'minor', true),
    ('a1e7a000-0000-4000-8000-00000000000a', 'Glucose below 70 mg/dL',
     11, 'below', 70, '0', NULL, 'major', true),
    ('a1e7a000-0000-4000-8000-00000000000b', 'Glucose below 54 mg/dL',
     11, 'below', 54, '0', NULL, 'critical', true),
    ('a1e7a000-0000-4000-8000-00000000000c', 'Glucose above 250 mg/dL for 15 minutes',
     11, 'above', 250, '15 minutes', NULL, 'minor', true),
    ('a1e7a000-0000-4000-8000-00000000000d', 'No CGM glucose reading for 15 minutes',
     11, 'missing_data', NULL, '0', '15 minutes', 'warning', true),
    ('a1e7a000-0000-4000-8000-00000000000e', 'No CGM glucose reading for 30 minutes',
     11, 'missing_data', NULL, '0', '30 minutes', 'major', true),
    ('a1e7a000-0000-4000-8000-00000000000f', 'No SpO2 reading for 24 hours',
     4, 'missing_data', NULL, '0', '24 hours', 'warning', true);
