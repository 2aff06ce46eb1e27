-- The FHIR routes' statements (psycopg placeholders). Like clinician.sql they run as role
-- rpmstore_api after set_acting_user: row-level security scopes the tables, and the readings
-- are read only through the scoping function rpm.fhir_patient_readings (migration 0009).

-- name: metric_catalogue
SELECT metric_id, code, loinc_code, display_name, canonical_unit
FROM rpm.metrics
ORDER BY metric_id;

-- name: metric_aliases
SELECT alias, metric_id FROM rpm.metric_aliases;

-- name: visible_patient
SELECT p.patient_id FROM rpm.patients p
WHERE p.patient_id = %(patient_id)s AND p.deleted_at IS NULL;

-- name: observations
SELECT measured_at, device_id, resource_key, metric_id, value, utc_offset_minutes,
       client_reading_id
FROM rpm.fhir_patient_readings(%(patient_id)s, %(metrics)s, %(start)s, %(end)s, %(after_at)s,
                               %(after_device)s, %(after_key)s, %(limit)s);

-- name: patients_by_identifier
-- Every live patient carrying each (system, value) asked for. An identifier may belong to
-- several patients (it is not unique on purpose): the import refuses those as ambiguous.
SELECT q.system, q.value, array_agg(DISTINCT i.patient_id) FILTER (WHERE i.patient_id IS NOT NULL)
       AS patient_ids
FROM unnest(%(systems)s::text[], %(values)s::text[]) AS q (system, value)
LEFT JOIN rpm.patient_identifiers i
       ON i.system = q.system AND i.value = q.value AND i.deleted_at IS NULL
      AND EXISTS (SELECT FROM rpm.patients p
                  WHERE p.patient_id = i.patient_id AND p.deleted_at IS NULL)
GROUP BY q.system, q.value;

-- name: live_patients
SELECT patient_id FROM rpm.patients
WHERE patient_id = ANY (%(patient_ids)s) AND deleted_at IS NULL;
