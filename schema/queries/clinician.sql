-- The clinician API's statements (psycopg placeholders). They run as role rpmstore_api inside a
-- transaction that first ran set_acting_user: row-level security (migration 0006) scopes every
-- table read here to the acting user's patients, and the time series is read only through the
-- SECURITY DEFINER functions that apply the same scope.

-- name: set_acting_user
SELECT set_config('rpm.acting_subject', %(subject)s, true),
       set_config('rpm.acting_roles', %(roles)s, true),
       set_config('rpm.acting_care_teams', %(care_teams)s, true);

-- name: insert_audit
-- All of one request's audit records in one statement, in the order they were made.
INSERT INTO rpm.audit_log (actor_subject, actor_role, patient_id, action, route, outcome, details)
SELECT %(subject)s, %(role)s, r.patient_id, r.action, %(route)s, %(outcome)s, r.details
FROM unnest(%(patient_ids)s::uuid[], %(actions)s::text[], %(details)s::jsonb[])
    WITH ORDINALITY AS r (patient_id, action, details, n)
ORDER BY r.n;

-- name: role_safety
-- What the API's own role may do that it must not: the API refuses to start if any is true.
SELECT r.rolsuper, r.rolbypassrls,
       EXISTS (SELECT FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relowner = r.oid AND n.nspname IN ('rpm', 'rpm_meta')) AS owns_tables
FROM pg_roles r
WHERE r.rolname = current_user;

-- name: panel
-- My panel: one row per visible patient, sorted by the worst open alert (critical first), then
-- by patient id; keyset pagination on (severity_rank, patient_id).
WITH open_alerts AS (
    SELECT a.patient_id,
           count(*) AS open_alerts,
           min(CASE a.severity WHEN 'critical' THEN 1 WHEN 'major' THEN 2
                               WHEN 'minor' THEN 3 ELSE 4 END) AS severity_rank
    FROM rpm.alerts a
    WHERE a.status <> 'resolved'
    GROUP BY a.patient_id
), panel AS (
    SELECT p.patient_id, i.given_name, i.family_name, i.birth_date, i.sex,
           coalesce(o.open_alerts, 0) AS open_alerts,
           coalesce(o.severity_rank, 5) AS severity_rank
    FROM rpm.patients p
    LEFT JOIN rpm.patient_identities i ON i.patient_id = p.patient_id
    LEFT JOIN open_alerts o ON o.patient_id = p.patient_id
    WHERE p.deleted_at IS NULL
)
SELECT patient_id, given_name, family_name, birth_date, sex, open_alerts, severity_rank
FROM panel
WHERE (severity_rank, patient_id) > (%(after_rank)s, %(after_patient)s)
ORDER BY severity_rank, patient_id
LIMIT %(limit)s;

-- name: latest_vitals
SELECT v.patient_id, m.code, m.loinc_code, m.display_name, m.canonical_unit, v.measured_at,
       v.value, v.utc_offset_minutes, v.device_id, v.received_at
FROM rpm.latest_vitals(%(patients)s) v
JOIN rpm.metrics m ON m.metric_id = v.metric_id
ORDER BY v.patient_id, m.metric_id;

-- name: audited_latest_vitals
-- One patient's newest reading of each metric and the read's audit record, in one statement
-- (one snapshot): no row at all when the patient is not visible (or deleted), and the record
-- says not_found; a single row of NULLs when visible without readings.
WITH patient AS (
    SELECT p.patient_id
    FROM rpm.patients p
    WHERE p.patient_id = %(patient_id)s AND p.deleted_at IS NULL
), audit AS (
    INSERT INTO rpm.audit_log (actor_subject, actor_role, patient_id, action, route, outcome,
                               details)
    SELECT %(subject)s, %(role)s, %(patient_id)s, %(action)s, %(route)s,
           CASE WHEN EXISTS (SELECT FROM patient) THEN 'success' ELSE 'not_found' END, '{}'
)
SELECT v.patient_id, m.code, m.loinc_code, m.display_name, m.canonical_unit, v.measured_at,
       v.value, v.utc_offset_minutes, v.device_id, v.received_at
FROM patient p
LEFT JOIN LATERAL rpm.latest_vitals(ARRAY[p.patient_id]) v ON true
LEFT JOIN rpm.metrics m ON m.metric_id = v.metric_id
ORDER BY m.metric_id;

-- name: patient_metric
-- Whether the patient is visible (and not deleted), and the metric named by code or LOINC code
-- (NULLs when there is none): one row, for the timeline's checks.
SELECT EXISTS (SELECT FROM rpm.patients p
               WHERE p.patient_id = %(patient_id)s AND p.deleted_at IS NULL) AS visible,
       m.metric_id, m.code, m.canonical_unit
FROM (SELECT) AS one
LEFT JOIN LATERAL (SELECT metric_id, code, canonical_unit
                   FROM rpm.metrics
                   WHERE code = %(metric)s OR loinc_code = %(metric)s
                   ORDER BY metric_id
                   LIMIT 1) AS m ON true;

-- name: patient
SELECT p.patient_id, p.created_at, i.given_name, i.family_name, i.birth_date, i.sex
FROM rpm.patients p
LEFT JOIN rpm.patient_identities i ON i.patient_id = p.patient_id
WHERE p.patient_id = %(patient_id)s AND p.deleted_at IS NULL;

-- name: patient_identifiers
SELECT system, value, type_code
FROM rpm.patient_identifiers
WHERE patient_id = %(patient_id)s AND deleted_at IS NULL
ORDER BY system, value;

-- name: patient_devices
-- Devices assigned to the patient now or in the past, newest assignment first.
SELECT d.device_id, d.kind, d.manufacturer, d.model, d.status,
       lower(a.valid_during) AS valid_from, upper(a.valid_during) AS valid_until
FROM rpm.device_assignments a
JOIN rpm.devices d ON d.device_id = a.device_id
WHERE a.patient_id = %(patient_id)s
ORDER BY lower(a.valid_during) DESC;

-- name: patient_open_alerts
SELECT count(*) FROM rpm.alerts WHERE patient_id = %(patient_id)s AND status <> 'resolved';

-- name: metric_by_code
SELECT metric_id, code, loinc_code, display_name, canonical_unit
FROM rpm.metrics
WHERE code = %(metric)s OR loinc_code = %(metric)s;

-- name: vitals_timeline_by_code
-- One patient's timeline of the metric named by code or LOINC code (as patient_metric finds it),
-- so both statements can be sent at once; no rows for an unknown metric or an invisible patient.
SELECT t.bucket_start, t.count, t.min, t.max, t.avg, t.last, t.last_at
FROM (SELECT metric_id FROM rpm.metrics
      WHERE code = %(metric)s OR loinc_code = %(metric)s
      ORDER BY metric_id
      LIMIT 1) AS m
CROSS JOIN LATERAL rpm.patient_vitals_timeline(%(patient_id)s, m.metric_id, %(start)s, %(end)s,
                                               %(resolution)s) AS t
LIMIT %(limit)s;

-- name: alert_inbox
-- Newest breach first; keyset pagination on (first_breach_at, alert_id) descending.
SELECT a.alert_id, a.patient_id, a.rule_id, a.status, a.severity, a.rule_snapshot,
       a.first_breach_at, a.last_breach_at, a.last_value, a.peak_value, a.breach_count, a.acknowledged_at,
       a.acknowledged_by, a.ack_note, a.resolved_at, a.resolved_by, a.resolution
FROM rpm.alerts a
WHERE (%(status)s::text IS NULL OR a.status = %(status)s)
  AND (%(severity)s::text IS NULL OR a.severity = %(severity)s)
  AND (%(patient_id)s::uuid IS NULL OR a.patient_id = %(patient_id)s)
  AND (a.first_breach_at, a.alert_id) < (%(before_time)s, %(before_alert)s)
ORDER BY a.first_breach_at DESC, a.alert_id DESC
LIMIT %(limit)s;

-- name: alert_by_id
SELECT a.alert_id, a.patient_id, a.rule_id, a.status, a.severity, a.rule_snapshot,
       a.first_breach_at, a.last_breach_at, a.last_value, a.peak_value, a.breach_count, a.acknowledged_at,
       a.acknowledged_by, a.ack_note, a.resolved_at, a.resolved_by, a.resolution
FROM rpm.alerts a
WHERE a.alert_id = %(alert_id)s;

-- name: audit_page
SELECT audit_id, occurred_at, actor_subject, actor_role, patient_id, action, route, outcome,
       details
FROM rpm.audit_log
WHERE audit_id < %(before)s
  AND (%(patient_id)s::uuid IS NULL OR patient_id = %(patient_id)s)
  AND (%(subject)s::text IS NULL OR actor_subject = %(subject)s)
ORDER BY audit_id DESC
LIMIT %(limit)s;

-- name: insert_care_team
INSERT INTO rpm.care_teams (name) VALUES (%(name)s) RETURNING care_team_id;

-- name: upsert_clinician
INSERT INTO rpm.clinicians (subject, display_name)
VALUES (%(subject)s, %(display_name)s)
ON CONFLICT (subject) DO UPDATE SET display_name = excluded.display_name
RETURNING clinician_id;

-- name: insert_team_member
INSERT INTO rpm.care_team_members (care_team_id, clinician_id)
VALUES (%(care_team_id)s, %(clinician_id)s)
ON CONFLICT DO NOTHING;

-- name: insert_team_patient
INSERT INTO rpm.care_team_patients (care_team_id, patient_id)
VALUES (%(care_team_id)s, %(patient_id)s)
ON CONFLICT DO NOTHING;

-- name: insert_rule
INSERT INTO rpm.alert_rules (name, metric_id, kind, threshold, sustained_for, missing_after,
                             severity, auto_resolve, enabled)
VALUES (%(name)s, %(metric_id)s, %(kind)s, %(threshold)s, %(sustained_for)s, %(missing_after)s,
        %(severity)s, %(auto_resolve)s, %(enabled)s)
RETURNING rule_id;

-- name: upsert_rule_override
INSERT INTO rpm.alert_rule_overrides (rule_id, patient_id, threshold, sustained_for,
                                      missing_after, enabled)
VALUES (%(rule_id)s, %(patient_id)s, %(threshold)s, %(sustained_for)s, %(missing_after)s,
        %(enabled)s)
ON CONFLICT (rule_id, patient_id) DO UPDATE
SET threshold = excluded.threshold, sustained_for = excluded.sustained_for,
    missing_after = excluded.missing_after, enabled = excluded.enabled;
