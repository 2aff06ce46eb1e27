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
-- A device with its assignment periods (oldest first), in one round trip.
SELECT d.device_id, d.status,
       coalesce(array_agg(lower(a.valid_during) ORDER BY lower(a.valid_during))
                FILTER (WHERE a.assignment_id IS NOT NULL), '{}') AS valid_from,
       -- NULL for a period still open
       coalesce(array_agg(CASE WHEN upper_inf(a.valid_during) THEN NULL
                               ELSE upper(a.valid_during) END
                          ORDER BY lower(a.valid_during))
                FILTER (WHERE a.assignment_id IS NOT NULL), '{}') AS valid_until,
       coalesce(array_agg(a.patient_id ORDER BY lower(a.valid_during))
                FILTER (WHERE a.assignment_id IS NOT NULL), '{}') AS patient_ids
FROM rpm.devices d
LEFT JOIN rpm.device_assignments a ON a.device_id = d.device_id
WHERE d.device_id = $1 AND d.deleted_at IS NULL
GROUP BY d.device_id;

-- name: device_by_token_hash
-- The same, for the device a bearer token (its SHA-256) was issued to.
SELECT d.device_id, d.status,
       coalesce(array_agg(lower(a.valid_during) ORDER BY lower(a.valid_during))
                FILTER (WHERE a.assignment_id IS NOT NULL), '{}') AS valid_from,
       coalesce(array_agg(CASE WHEN upper_inf(a.valid_during) THEN NULL
                               ELSE upper(a.valid_during) END
                          ORDER BY lower(a.valid_during))
                FILTER (WHERE a.assignment_id IS NOT NULL), '{}') AS valid_until,
       coalesce(array_agg(a.patient_id ORDER BY lower(a.valid_during))
                FILTER (WHERE a.assignment_id IS NOT NULL), '{}') AS patient_ids
FROM rpm.devices d
LEFT JOIN rpm.device_assignments a ON a.device_id = d.device_id
WHERE d.credential_sha256 = $1 AND d.deleted_at IS NULL
GROUP BY d.device_id;
