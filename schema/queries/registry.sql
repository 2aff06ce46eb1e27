-- Registration of patients, devices and assignments (psycopg placeholders).

-- name: insert_patient
INSERT INTO rpm.patients DEFAULT VALUES
RETURNING patient_id;

-- name: insert_patient_identity
INSERT INTO rpm.patient_identities (patient_id, given_name, family_name, birth_date, sex)
VALUES (%(patient_id)s, %(given_name)s, %(family_name)s, %(birth_date)s, %(sex)s);

-- name: insert_patient_identifier
INSERT INTO rpm.patient_identifiers (patient_id, system, value)
VALUES (%(patient_id)s, %(system)s, %(value)s);

-- name: insert_device
INSERT INTO rpm.devices (kind, manufacturer, model, serial_number, credential_sha256,
                         broker_password_hash)
VALUES (%(kind)s, %(manufacturer)s, %(model)s, %(serial_number)s, %(credential_sha256)s,
        %(broker_password_hash)s)
RETURNING device_id;

-- name: insert_assignment
INSERT INTO rpm.device_assignments (device_id, patient_id, valid_during)
VALUES (%(device_id)s, %(patient_id)s, tstzrange(%(valid_from)s, %(valid_until)s, '[)'))
RETURNING assignment_id;

-- name: end_open_assignment
-- Closes the device's open-ended assignment at the given time, so a new one can start there.
UPDATE rpm.device_assignments
SET valid_during = tstzrange(lower(valid_during), %(ended_at)s, '[)')
WHERE device_id = %(device_id)s
  AND upper_inf(valid_during)
  AND lower(valid_during) < %(ended_at)s
RETURNING assignment_id;

-- name: patient_for_device_at
SELECT rpm.patient_for_device_at(%(device_id)s, %(at)s);

-- name: broker_device_accounts
-- Every device that may log in to the broker now: active, not deleted, with a broker hash.
SELECT device_id::text, broker_password_hash
FROM rpm.devices
WHERE status = 'active' AND deleted_at IS NULL AND broker_password_hash IS NOT NULL
ORDER BY device_id;
