-- What ingest reads to validate readings (asyncpg: $n placeholders).

-- name: catalogue_metrics
SELECT metric_id, code, loinc_code, canonical_unit, plausible_min, plausible_max
FROM rpm.metrics;

-- name: catalogue_aliases
SELECT alias, metric_id
FROM rpm.metric_aliases;

-- name: catalogue_conversions
SELECT metric_id, unit, scale, shift
FROM rpm.unit_conversions;

-- name: device_by_id
SELECT device_id, status
FROM rpm.devices
WHERE device_id = $1 AND deleted_at IS NULL;

-- name: device_by_token_hash
SELECT device_id, status
FROM rpm.devices
WHERE credential_sha256 = $1 AND deleted_at IS NULL;

-- name: device_assignments
SELECT lower(valid_during) AS valid_from,
       CASE WHEN upper_inf(valid_during) THEN NULL ELSE upper(valid_during) END AS valid_until,
       patient_id
FROM rpm.device_assignments
WHERE device_id = $1
ORDER BY lower(valid_during);
