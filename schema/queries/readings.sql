-- Reading readings back (psycopg placeholders).

-- name: metric_ids_by_code
SELECT code, metric_id
FROM rpm.metrics;

-- name: recent_for_patient
SELECT r.measured_at, m.code, r.value, m.canonical_unit, r.device_id, r.batch_id
FROM rpm.readings r
JOIN rpm.metrics m USING (metric_id)
WHERE r.patient_id = %(patient_id)s
  AND r.measured_at >= %(since)s
ORDER BY r.measured_at, m.code
LIMIT %(limit)s;
