-- Canonical schema: the versioned part of the current rpmstore schema in one file (tables,
-- columns, constraints, indexes, hypertables, continuous aggregates, grants on tables, reference
-- data), for reading and for the test that proves it, followed by the idempotent layer
-- (schema/idempotent: functions, views, triggers, row-level security), equals the result of
-- applying every migration in order and then the layer. Any migration that changes the schema
-- changes this file in the same commit; a change to the layer alone changes neither.
--
-- Relational tables for patients, devices, care teams, the metric catalogue, alert rules, alerts,
-- the audit log and the ingest quarantine; one hypertable for readings.
-- Conventions: created_at/updated_at on every mutable table; deleted_at (soft delete) where a row
-- must stay for history (readings and alerts keep pointing at it); CHECK constraints instead of
-- enum types so later migrations can widen a list inside a transaction.

CREATE EXTENSION IF NOT EXISTS timescaledb;
-- btree_gist lets one exclusion constraint mix equality (device) and overlap (validity period).
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE SCHEMA rpm;

-- ---------------------------------------------------------------------------------------------
-- Patients. patient_id is a pseudonymous key; identifying details live in patient_identities so
-- they can be access-controlled and erased apart from the clinical record.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.patients (
    patient_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE rpm.patient_identities (
    patient_id  uuid PRIMARY KEY REFERENCES rpm.patients (patient_id) ON DELETE CASCADE,
    given_name  text,
    family_name text,
    birth_date  date,
    sex         text CHECK (sex IN ('female', 'male', 'other', 'unknown')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- External identifiers (MRN per issuing system). Deliberately not unique on (system, value):
-- duplicate registrations happen in hospitals until a merge; importers must detect the ambiguity
-- and quarantine rather than guess, which they can only do if the database can represent it.
CREATE TABLE rpm.patient_identifiers (
    identifier_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id    uuid NOT NULL REFERENCES rpm.patients (patient_id),
    system        text NOT NULL CHECK (system <> ''),
    value         text NOT NULL CHECK (value <> ''),
    type_code     text NOT NULL DEFAULT 'MR',  -- HL7 v2 table 0203: MR = medical record number
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    CONSTRAINT patient_identifiers_once_per_patient UNIQUE (patient_id, system, value)
);
CREATE INDEX patient_identifiers_lookup ON rpm.patient_identifiers (system, value)
    WHERE deleted_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Care teams and their members. A clinician sees the patients of the teams they belong to.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.care_teams (
    care_team_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL CHECK (name <> ''),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE UNIQUE INDEX care_teams_name ON rpm.care_teams (name) WHERE deleted_at IS NULL;

CREATE TABLE rpm.clinicians (
    clinician_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subject      text NOT NULL UNIQUE CHECK (subject <> ''),  -- OIDC "sub" claim
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);

CREATE TABLE rpm.care_team_members (
    care_team_id uuid NOT NULL REFERENCES rpm.care_teams (care_team_id),
    clinician_id uuid NOT NULL REFERENCES rpm.clinicians (clinician_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (care_team_id, clinician_id)
);
CREATE INDEX care_team_members_by_clinician ON rpm.care_team_members (clinician_id);

CREATE TABLE rpm.care_team_patients (
    care_team_id uuid NOT NULL REFERENCES rpm.care_teams (care_team_id),
    patient_id   uuid NOT NULL REFERENCES rpm.patients (patient_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (care_team_id, patient_id)
);
CREATE INDEX care_team_patients_by_patient ON rpm.care_team_patients (patient_id);

-- ---------------------------------------------------------------------------------------------
-- Devices and their assignment to patients over time.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.devices (
    device_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind              text NOT NULL CHECK (kind IN ('bp_cuff', 'pulse_oximeter', 'glucose_meter',
                                                    'scale', 'thermometer', 'wearable', 'gateway')),
    manufacturer      text NOT NULL CHECK (manufacturer <> ''),
    model             text NOT NULL CHECK (model <> ''),
    serial_number     text NOT NULL CHECK (serial_number <> ''),
    status            text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'suspended', 'retired')),
    -- SHA-256 of the device's bearer token. Tokens are 256-bit random values issued once, so a
    -- fast hash is enough (no dictionary to attack) and keeps authentication off the hot path's
    -- critical section. The token itself is never stored.
    credential_sha256 bytea NOT NULL UNIQUE CHECK (length(credential_sha256) = 32),
    credential_issued_at timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    -- The broker's own salted hash of the token (Mosquitto's PBKDF2-SHA512 "$7$" format), so a
    -- device logs in to MQTT as its device id with its token; computed at registration.
    broker_password_hash text
        CONSTRAINT devices_broker_password_hash_format CHECK (broker_password_hash ~ '^\$7\$[0-9]+\$'),
    CONSTRAINT devices_serial_once UNIQUE (manufacturer, model, serial_number)
);

-- A reading is attributed to the patient the device was assigned to at the reading's time
-- (never by today's assignment), so assignments are periods that may not overlap per device.
CREATE TABLE rpm.device_assignments (
    assignment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     uuid NOT NULL REFERENCES rpm.devices (device_id),
    patient_id    uuid NOT NULL REFERENCES rpm.patients (patient_id),
    valid_during  tstzrange NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT device_assignments_period_shape CHECK (
        NOT isempty(valid_during)
        AND lower(valid_during) IS NOT NULL
        AND lower_inc(valid_during)
        AND NOT upper_inc(valid_during)
    ),
    -- Also the index that answers "which patient had device D at time T".
    CONSTRAINT device_assignments_no_overlap
        EXCLUDE USING gist (device_id WITH =, valid_during WITH &&)
);
CREATE INDEX device_assignments_by_patient ON rpm.device_assignments (patient_id);

-- ---------------------------------------------------------------------------------------------
-- Metric catalogue: what can be measured, its LOINC code, canonical UCUM unit, plausible range.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.metrics (
    metric_id      smallint PRIMARY KEY,  -- compact: stored in every reading row
    code           text NOT NULL UNIQUE CHECK (code ~ '^[a-z][a-z0-9_]*$'),
    loinc_code     text NOT NULL UNIQUE CHECK (loinc_code ~ '^[0-9]{1,7}-[0-9]$'),
    display_name   text NOT NULL,
    canonical_unit text NOT NULL,  -- UCUM
    plausible_min  double precision NOT NULL,
    plausible_max  double precision NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT metrics_plausible_range CHECK (plausible_min < plausible_max)
);

-- Other codes that mean the same measurement (e.g. LOINC 59408-5, SpO2 by pulse oximetry).
CREATE TABLE rpm.metric_aliases (
    alias     text PRIMARY KEY,
    metric_id smallint NOT NULL REFERENCES rpm.metrics (metric_id)
);

-- canonical value = value * scale + shift; the canonical unit itself has scale 1, shift 0.
CREATE TABLE rpm.unit_conversions (
    metric_id smallint NOT NULL REFERENCES rpm.metrics (metric_id),
    unit      text NOT NULL,  -- UCUM
    scale     double precision NOT NULL CHECK (scale > 0),
    shift     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (metric_id, unit)
);

INSERT INTO rpm.metrics (metric_id, code, loinc_code, display_name, canonical_unit,
                         plausible_min, plausible_max)
VALUES (1, 'heart_rate', '8867-4', 'Heart rate', '/min', 20, 300),
       (2, 'resting_heart_rate', '40443-4', 'Resting heart rate', '/min', 20, 250),
       (3, 'respiratory_rate', '9279-1', 'Respiratory rate', '/min', 2, 80),
       (4, 'spo2', '2708-6', 'Oxygen saturation (SpO2)', '%', 30, 100),
       (5, 'bp_systolic', '8480-6', 'Systolic blood pressure', 'mm[Hg]', 40, 300),
       (6, 'bp_diastolic', '8462-4', 'Diastolic blood pressure', 'mm[Hg]', 20, 200),
       (7, 'body_temperature', '8310-5', 'Body temperature', 'Cel', 25, 45),
       (8, 'body_weight', '29463-7', 'Body weight', 'kg', 0.3, 500),
       (9, 'body_height', '8302-2', 'Body height', 'cm', 20, 280),
       (10, 'bmi', '39156-5', 'Body mass index', 'kg/m2', 5, 150),
       (11, 'glucose_cgm', '99504-3', 'Glucose, interstitial (CGM)', 'mg/dL', 10, 1000),
       (12, 'steps_24h', '41950-7', 'Steps in 24 hours', '/d', 0, 200000);

INSERT INTO rpm.metric_aliases (alias, metric_id)
VALUES ('59408-5', 4);

INSERT INTO rpm.unit_conversions (metric_id, unit, scale, shift)
SELECT metric_id, canonical_unit, 1, 0 FROM rpm.metrics;

INSERT INTO rpm.unit_conversions (metric_id, unit, scale, shift)
VALUES (7, '[degF]', 5.0 / 9.0, -160.0 / 9.0),   -- (F - 32) * 5/9
       (8, 'g', 0.001, 0),
       (8, '[lb_av]', 0.45359237, 0),
       (9, '[in_i]', 2.54, 0),
       (11, 'mmol/L', 18.016, 0);

-- ---------------------------------------------------------------------------------------------
-- Readings: one hypertable. No foreign keys here on purpose: ingest validates device, patient
-- and metric before COPY, referenced rows are only ever soft-deleted, and three RI triggers per
-- row would dominate bulk-load cost.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.ingest_batches (
    batch_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source       text NOT NULL CHECK (source IN ('http', 'mqtt', 'fhir', 'import', 'migration')),
    ingestor     text NOT NULL,  -- which process wrote it (host:pid)
    row_count    integer NOT NULL CHECK (row_count >= 0),  -- rows stored
    committed_at timestamptz NOT NULL DEFAULT now(),
    duplicate_count  integer NOT NULL DEFAULT 0 CHECK (duplicate_count >= 0),
    conflict_count   integer NOT NULL DEFAULT 0 CHECK (conflict_count >= 0),
    quarantine_count integer NOT NULL DEFAULT 0 CHECK (quarantine_count >= 0)
);

-- Column order puts 8- and 16-byte columns first so rows carry no alignment padding.
CREATE TABLE rpm.readings (
    measured_at        timestamptz NOT NULL,  -- measurement time (stored as UTC)
    received_at        timestamptz NOT NULL,  -- when the server received it
    value              double precision NOT NULL,  -- in the metric's canonical unit
    batch_id           bigint NOT NULL,  -- rpm.ingest_batches: lineage of every row
    device_id          uuid NOT NULL,
    patient_id         uuid NOT NULL,  -- the device's assignment valid at measured_at
    metric_id          smallint NOT NULL,
    utc_offset_minutes smallint CHECK (utc_offset_minutes BETWEEN -1080 AND 1080),
    client_reading_id  text,  -- the device's own id for the reading, when it sends one
    CONSTRAINT readings_value_finite CHECK (value NOT IN ('NaN', 'Infinity', '-Infinity'))
);

SELECT create_hypertable(
    'rpm.readings',
    by_range('measured_at', INTERVAL '7 days'),
    create_default_indexes => false
);

-- Natural key: a device reports one value per metric per instant. Retries and redeliveries hit
-- it, so deduplication is a property of the table, not of the writer.
CREATE UNIQUE INDEX readings_natural_key ON rpm.readings (device_id, metric_id, measured_at);
-- Per-patient, per-metric time ranges (latest vitals, timelines, alert evaluation).
CREATE INDEX readings_patient_metric_time ON rpm.readings (patient_id, metric_id, measured_at DESC);

-- ---------------------------------------------------------------------------------------------
-- Ingest quarantine: every reading that was received but not stored, with why; the raw bytes
-- of each payload are kept once, in rpm.ingest_payloads, keyed by their SHA-256, so a payload
-- of many rejected readings is not copied once per reading, and a retried payload's rejected
-- readings are recognised rather than quarantined again (ingest_quarantine_once).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.ingest_payloads (
    payload_sha256    bytea PRIMARY KEY CHECK (octet_length(payload_sha256) = 32),
    raw_payload       bytea NOT NULL,  -- exactly the bytes received
    first_received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rpm.ingest_quarantine (
    quarantine_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    source          text NOT NULL CHECK (source IN ('http', 'mqtt', 'fhir', 'import')),
    reason          text NOT NULL CHECK (reason ~ '^[a-z][a-z0-9_]*$'),  -- machine-readable
    detail          text NOT NULL,  -- for a person
    reading_index   integer,  -- position of the offending reading, when the payload parsed
    claimed_device  text,  -- device id as the sender claimed it (may be unknown or malformed)
    topic           text,  -- MQTT topic, when it came over MQTT
    created_at      timestamptz NOT NULL DEFAULT now(),
    batch_id        bigint,  -- the ingest batch that quarantined it (lineage)
    payload_sha256  bytea NOT NULL,  -- the payload it came in
    CONSTRAINT ingest_quarantine_payload
        FOREIGN KEY (payload_sha256) REFERENCES rpm.ingest_payloads,
    CONSTRAINT ingest_quarantine_detail_bounded CHECK (length(detail) <= 1000)
);
CREATE INDEX ingest_quarantine_received ON rpm.ingest_quarantine (received_at);
CREATE INDEX ingest_quarantine_reason ON rpm.ingest_quarantine (reason, received_at);
-- One row per rejected reading of a payload (reading_index NULL: the payload refused whole).
CREATE UNIQUE INDEX ingest_quarantine_once
    ON rpm.ingest_quarantine (payload_sha256, reading_index, reason) NULLS NOT DISTINCT;

-- ---------------------------------------------------------------------------------------------
-- Rollup invalidations. Rows measured before the threshold fall in buckets the refresher already
-- rolled up; ingest records their ranges so exactly those buckets are recomputed (late data).
-- Until the refresher advances the threshold (-infinity), nothing is recorded, like
-- TimescaleDB's own invalidation threshold for continuous aggregates.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.rollup_watermark (
    singleton              boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    invalidation_threshold timestamptz NOT NULL DEFAULT '-infinity',
    updated_at             timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rpm.rollup_watermark DEFAULT VALUES;

CREATE TABLE rpm.rollup_invalidations (
    invalidation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id      uuid NOT NULL,
    metric_id       smallint NOT NULL,
    range_start     timestamptz NOT NULL,  -- oldest and newest measured_at of the late rows
    range_end       timestamptz NOT NULL,
    batch_id        bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rollup_invalidations_range CHECK (range_start <= range_end)
);

-- ---------------------------------------------------------------------------------------------
-- Alert rules, per-patient overrides, alerts and their lifecycle events.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.alert_rules (
    rule_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL CHECK (name <> ''),
    metric_id     smallint NOT NULL REFERENCES rpm.metrics (metric_id),
    kind          text NOT NULL CHECK (kind IN ('above', 'below', 'missing_data')),
    threshold     double precision,  -- above/below, in the metric's canonical unit
    sustained_for interval NOT NULL DEFAULT '0' CHECK (sustained_for >= '0'),
    missing_after interval CHECK (missing_after > '0'),  -- missing_data only
    severity      text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    auto_resolve  boolean NOT NULL DEFAULT true,
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    CONSTRAINT alert_rules_parameters CHECK (
        (kind IN ('above', 'below') AND threshold IS NOT NULL AND missing_after IS NULL)
        OR (kind = 'missing_data' AND missing_after IS NOT NULL AND threshold IS NULL)
    )
);

CREATE TABLE rpm.alert_rule_overrides (
    rule_id       uuid NOT NULL REFERENCES rpm.alert_rules (rule_id),
    patient_id    uuid NOT NULL REFERENCES rpm.patients (patient_id),
    threshold     double precision,
    sustained_for interval CHECK (sustained_for >= '0'),
    missing_after interval CHECK (missing_after > '0'),
    enabled       boolean,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, patient_id)
);

CREATE TABLE rpm.alerts (
    alert_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_id         uuid NOT NULL REFERENCES rpm.alert_rules (rule_id),
    patient_id      uuid NOT NULL REFERENCES rpm.patients (patient_id),
    status          text NOT NULL DEFAULT 'open'
                        CHECK (status IN ('open', 'acknowledged', 'resolved')),
    severity        text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    rule_snapshot   jsonb NOT NULL,  -- the rule and thresholds that fired it, as they were then
    first_breach_at timestamptz NOT NULL,  -- measurement times, not arrival times
    last_breach_at  timestamptz NOT NULL,
    last_value      double precision,
    breach_count    integer NOT NULL DEFAULT 1 CHECK (breach_count > 0),
    acknowledged_at timestamptz,
    acknowledged_by text,
    ack_note        text,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution      text CHECK (resolution IN ('auto', 'manual')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alerts_breach_order CHECK (first_breach_at <= last_breach_at),
    CONSTRAINT alerts_ack_recorded CHECK (
        status = 'open' OR (acknowledged_at IS NOT NULL) = (acknowledged_by IS NOT NULL)
    ),
    CONSTRAINT alerts_resolution_recorded CHECK (
        (status = 'resolved') = (resolved_at IS NOT NULL AND resolution IS NOT NULL)
    )
);
-- One open (or acknowledged) alert per patient and rule: repeated breaches update it.
CREATE UNIQUE INDEX alerts_one_active_per_rule ON rpm.alerts (patient_id, rule_id)
    WHERE status <> 'resolved';
CREATE INDEX alerts_inbox ON rpm.alerts (status, severity, first_breach_at DESC);
CREATE INDEX alerts_by_patient ON rpm.alerts (patient_id, first_breach_at DESC);

CREATE TABLE rpm.alert_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    uuid NOT NULL REFERENCES rpm.alerts (alert_id),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,  -- clinician subject, or 'rpmstore' for automatic transitions
    from_status text CHECK (from_status IN ('open', 'acknowledged', 'resolved')),
    to_status   text NOT NULL CHECK (to_status IN ('open', 'acknowledged', 'resolved')),
    note        text
);
CREATE INDEX alert_events_by_alert ON rpm.alert_events (alert_id, occurred_at);

-- ---------------------------------------------------------------------------------------------
-- Audit log: who read or changed which patient's data. Append-only, enforced by the database.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.audit_log (
    audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    actor_subject text NOT NULL,
    actor_role    text NOT NULL,
    patient_id    uuid,  -- null for actions on no particular patient
    action        text NOT NULL,
    route         text NOT NULL,  -- API route template or CLI command
    outcome       text NOT NULL CHECK (outcome IN ('success', 'denied', 'not_found', 'error')),
    details       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_patient ON rpm.audit_log (patient_id, occurred_at DESC);
CREATE INDEX audit_log_by_time ON rpm.audit_log (occurred_at);

-- ---------------------------------------------------------------------------------------------
-- Rollups (migration 0004): 1-minute, 1-hour and 1-day aggregates per patient and metric. Both
-- editions expose rpm.readings_1m, rpm.readings_1h and rpm.readings_1d with the same columns
-- and the same meaning (materialized buckets below a watermark, the rest aggregated on the
-- fly). TSL edition: hierarchical continuous aggregates with refresh policies. Apache edition:
-- rpmstore's own rollup tables behind views (schema/idempotent/20_rollup_views.sql), maintained
-- by the refresher (jobs/rollups.py) from rpm.rollup_invalidations. The edition is read when
-- the schema is built. rpm.vitals_timeline reads them (schema/idempotent/30_reads.sql).
-- ---------------------------------------------------------------------------------------------
-- Every level stores sum and count (so averages of coarser levels are exact), min, max, and the
-- last value by measurement time with that time. Ties at the same instant (two devices of one
-- patient) go to the larger value, so both editions pick the same reading:
--     last_value = (max(ARRAY[epoch seconds of measured_at, value]))[2]
-- max over a float8 array is parallel-safe and allowed in continuous aggregates; TimescaleDB's
-- last(value, (measured_at, value)) is not (a parallel plan cannot deserialize its anonymous
-- record state). Epoch seconds as float8 keep distinct microseconds distinct and in order
-- (until about the year 2240); they are taken from an interval because continuous aggregates
-- accept only immutable expressions, and date_part on a timestamptz is merely stable.

DO $rollups$
BEGIN
    IF current_setting('timescaledb.license') = 'timescale' THEN
        CREATE MATERIALIZED VIEW rpm.readings_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false,
                  timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 minute', measured_at) AS bucket_start,
               patient_id, metric_id,
               count(*) AS reading_count,
               sum(value) AS value_sum,
               min(value) AS value_min,
               max(value) AS value_max,
               (max(ARRAY[date_part('epoch', measured_at - timestamptz 'epoch'), value]))[2]
                   AS last_value,
               max(measured_at) AS last_at
        FROM rpm.readings
        GROUP BY 1, 2, 3
        WITH NO DATA;
        CREATE INDEX readings_1m_key ON rpm.readings_1m (patient_id, metric_id, bucket_start);

        CREATE MATERIALIZED VIEW rpm.readings_1h
            WITH (timescaledb.continuous, timescaledb.materialized_only = false,
                  timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 hour', bucket_start) AS bucket_start,
               patient_id, metric_id,
               sum(reading_count)::bigint AS reading_count,
               sum(value_sum) AS value_sum,
               min(value_min) AS value_min,
               max(value_max) AS value_max,
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2]
                   AS last_value,
               max(last_at) AS last_at
        FROM rpm.readings_1m
        GROUP BY 1, 2, 3
        WITH NO DATA;
        CREATE INDEX readings_1h_key ON rpm.readings_1h (patient_id, metric_id, bucket_start);

        CREATE MATERIALIZED VIEW rpm.readings_1d
            WITH (timescaledb.continuous, timescaledb.materialized_only = false,
                  timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 day', bucket_start) AS bucket_start,
               patient_id, metric_id,
               sum(reading_count)::bigint AS reading_count,
               sum(value_sum) AS value_sum,
               min(value_min) AS value_min,
               max(value_max) AS value_max,
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2]
                   AS last_value,
               max(last_at) AS last_at
        FROM rpm.readings_1h
        GROUP BY 1, 2, 3
        WITH NO DATA;
        CREATE INDEX readings_1d_key ON rpm.readings_1d (patient_id, metric_id, bucket_start);

        -- start_offset is the raw horizon (RPMSTORE_ROLLUP_RAW_HORIZON, default 30 days): a
        -- refresh never reaches buckets whose raw chunks retention may have dropped. The
        -- refresher (rpmstore rollups refresh) re-aligns these windows with the settings.
        PERFORM add_continuous_aggregate_policy('rpm.readings_1m',
            start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute');
        PERFORM add_continuous_aggregate_policy('rpm.readings_1h',
            start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '5 minutes');
        PERFORM add_continuous_aggregate_policy('rpm.readings_1d',
            start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '15 minutes');
    ELSE
        -- Buckets starting before materialized_until are in the rollup tables (every level:
        -- a coarser bucket is materialized once it ends at or before it). The layer's views
        -- aggregate the rest on the fly. Separate from rpm.rollup_watermark on purpose: the
        -- refresher locks that table exclusively for a moment, and readers must never wait.
        CREATE TABLE rpm.rollup_progress (
            singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            materialized_until timestamptz NOT NULL DEFAULT '-infinity',
            updated_at         timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO rpm.rollup_progress DEFAULT VALUES;

        -- Column order puts 8-byte columns first so rows carry no alignment padding.
        CREATE TABLE rpm.rollup_1m (
            bucket_start  timestamptz NOT NULL,
            last_at       timestamptz NOT NULL,
            reading_count bigint NOT NULL CHECK (reading_count > 0),
            value_sum     double precision NOT NULL,
            value_min     double precision NOT NULL,
            value_max     double precision NOT NULL,
            last_value    double precision NOT NULL,
            patient_id    uuid NOT NULL,
            metric_id     smallint NOT NULL,
            PRIMARY KEY (patient_id, metric_id, bucket_start)
        );
        CREATE TABLE rpm.rollup_1h (LIKE rpm.rollup_1m INCLUDING CONSTRAINTS,
                                    PRIMARY KEY (patient_id, metric_id, bucket_start));
        CREATE TABLE rpm.rollup_1d (LIKE rpm.rollup_1m INCLUDING CONSTRAINTS,
                                    PRIMARY KEY (patient_id, metric_id, bucket_start));
        -- Hypertables so retention can later drop old rollups by chunk, like raw readings.
        -- Chunks hold about as many rows as a raw chunk would for minute-level data.
        PERFORM create_hypertable('rpm.rollup_1m', by_range('bucket_start', INTERVAL '28 days'),
                                  create_default_indexes => false);
        PERFORM create_hypertable('rpm.rollup_1h', by_range('bucket_start', INTERVAL '365 days'),
                                  create_default_indexes => false);
        PERFORM create_hypertable('rpm.rollup_1d', by_range('bucket_start', INTERVAL '3650 days'),
                                  create_default_indexes => false);
    END IF;
END
$rollups$;

-- ---------------------------------------------------------------------------------------------
-- Alerting engine (migration 0005): peak value, parked evaluations, default rules.
-- ---------------------------------------------------------------------------------------------
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

-- =============================================================================================
-- Access: care-team scoping for the API role (migration 0006). The scoping functions and the
-- row-level security policies are in schema/idempotent (10_scoping.sql, 60_policies.sql).
-- =============================================================================================
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rpmstore_api') THEN
        RAISE EXCEPTION 'role rpmstore_api does not exist'
            USING HINT = 'create it as a LOGIN role without BYPASSRLS before migrating '
                         '(rpmstore db up and deploy/timescaledb/010_rpmstore_owner.sh do)';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Grants. Column lists keep credential hashes unreadable: SELECT on rpm.devices leaves out
-- credential_sha256 and broker_password_hash (admins may write them when registering).
-- ---------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA rpm TO rpmstore_api;
GRANT SELECT ON rpm.metrics, rpm.metric_aliases, rpm.unit_conversions TO rpmstore_api;
GRANT SELECT, INSERT, UPDATE ON rpm.patients, rpm.patient_identities, rpm.patient_identifiers,
    rpm.care_teams, rpm.clinicians, rpm.device_assignments, rpm.alert_rules,
    rpm.alert_rule_overrides TO rpmstore_api;
GRANT SELECT, INSERT, DELETE ON rpm.care_team_members, rpm.care_team_patients TO rpmstore_api;
GRANT SELECT (device_id, kind, manufacturer, model, serial_number, status, created_at,
              updated_at, deleted_at) ON rpm.devices TO rpmstore_api;
GRANT INSERT (kind, manufacturer, model, serial_number, credential_sha256, broker_password_hash)
    ON rpm.devices TO rpmstore_api;
GRANT UPDATE (status) ON rpm.devices TO rpmstore_api;
GRANT SELECT, UPDATE ON rpm.alerts TO rpmstore_api;
GRANT SELECT, INSERT ON rpm.alert_events TO rpmstore_api;
GRANT SELECT, INSERT ON rpm.audit_log TO rpmstore_api;

-- =============================================================================================
-- 0007 retention: policies, metric classes, legal holds, run ledger, held readings, ingest horizon.
-- =============================================================================================

-- Metric classes group catalogue metrics that share a retention period. A metric without a
-- class follows its table's default policy (metric_class NULL).
CREATE TABLE rpm.metric_retention_classes (
    metric_id    smallint PRIMARY KEY REFERENCES rpm.metrics (metric_id),
    metric_class text NOT NULL CHECK (metric_class ~ '^[a-z][a-z0-9_]*$')
);

INSERT INTO rpm.metric_retention_classes (metric_id, metric_class)
VALUES (1, 'vital_signs'), (2, 'vital_signs'), (3, 'vital_signs'), (4, 'vital_signs'),
       (5, 'vital_signs'), (6, 'vital_signs'), (7, 'vital_signs'),
       (8, 'body_measurements'), (9, 'body_measurements'), (10, 'body_measurements'),
       (11, 'glucose'),
       (12, 'activity');

-- One row per hypertable (metric_class NULL: the table's default) and optionally per metric
-- class of a table that has a metric_id column. Targets are named, not referenced: rollup
-- tables may not exist yet (or ever, on a given edition); the planner skips a missing target
-- and says so. Chunks are dropped at the table's longest period; a class kept for less is
-- removed by batched DELETE (after the same archive) from chunks that stay.
CREATE TABLE rpm.retention_policies (
    policy_id        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_schema    name NOT NULL,
    target_table     name NOT NULL,
    metric_class     text CHECK (metric_class ~ '^[a-z][a-z0-9_]*$'),
    keep             interval NOT NULL CHECK (keep > interval '0'),
    kind             text NOT NULL CHECK (kind IN ('raw', 'rollup')),
    -- Raw data whose rollups are not complete for a range is not dropped (pending
    -- invalidations, and the refresher's watermark once rollup tables exist).
    requires_rollups boolean NOT NULL DEFAULT false,
    enabled          boolean NOT NULL DEFAULT true,
    note             text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retention_policies_target_class UNIQUE NULLS NOT DISTINCT
        (target_schema, target_table, metric_class)
);

INSERT INTO rpm.retention_policies (target_schema, target_table, metric_class, keep, kind,
                                    requires_rollups, note)
VALUES ('rpm', 'readings', NULL, interval '90 days', 'raw', true,
        'raw readings; rollups keep the long-term trend'),
       -- Apache edition: rpmstore's rollup hypertables (migration 0004).
       ('rpm', 'rollup_1m', NULL, interval '2 years', 'rollup', false, '1-minute rollups'),
       ('rpm', 'rollup_1h', NULL, interval '10 years', 'rollup', false, 'hourly rollups'),
       ('rpm', 'rollup_1d', NULL, interval '10 years', 'rollup', false, 'daily rollups'),
       -- TSL edition: the continuous aggregates of the same name (views on Apache: skipped).
       ('rpm', 'readings_1m', NULL, interval '2 years', 'rollup', false, '1-minute rollups'),
       ('rpm', 'readings_1h', NULL, interval '10 years', 'rollup', false, 'hourly rollups'),
       ('rpm', 'readings_1d', NULL, interval '10 years', 'rollup', false, 'daily rollups');

-- Patients whose raw readings must not be destroyed (litigation, investigation, complaint).
-- A hold is released, never deleted: the row stays as the record of who held what and why.
CREATE TABLE rpm.legal_holds (
    hold_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id     uuid NOT NULL REFERENCES rpm.patients (patient_id),
    reason         text NOT NULL CHECK (reason <> ''),
    placed_by      text NOT NULL CHECK (placed_by <> ''),
    placed_at      timestamptz NOT NULL DEFAULT now(),
    released_by    text,
    released_at    timestamptz,
    release_reason text,
    CONSTRAINT legal_holds_release_complete
        CHECK ((released_at IS NULL) = (released_by IS NULL)),
    CONSTRAINT legal_holds_release_after_placement
        CHECK (released_at IS NULL OR released_at >= placed_at)
);
CREATE INDEX legal_holds_active ON rpm.legal_holds (patient_id) WHERE released_at IS NULL;

-- Every retention run (and archive restore): what, when, who, how many rows, outcome.
CREATE TABLE rpm.retention_runs (
    run_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action         text NOT NULL CHECK (action IN ('run', 'restore')),
    operator       text NOT NULL CHECK (operator <> ''),
    as_of          timestamptz NOT NULL,  -- the "now" horizons were measured from
    archive_url    text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    outcome        text NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'succeeded', 'partial', 'failed', 'nothing_due')),
    rows_archived  bigint NOT NULL DEFAULT 0 CHECK (rows_archived >= 0),
    rows_dropped   bigint NOT NULL DEFAULT 0 CHECK (rows_dropped >= 0),
    rows_held      bigint NOT NULL DEFAULT 0 CHECK (rows_held >= 0),
    rows_restored  bigint NOT NULL DEFAULT 0 CHECK (rows_restored >= 0),
    detail         text
);

-- One entry per chunk (or per metric-class range) a run considered: archived, dropped or
-- deleted, skipped (and why) or failed (and why). Restores read the archive locations here.
CREATE TABLE rpm.retention_ledger (
    entry_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        bigint NOT NULL REFERENCES rpm.retention_runs (run_id),
    target_schema name NOT NULL,
    target_table  name NOT NULL,
    chunk         text,  -- schema-qualified chunk name at the time
    metric_class  text,
    metric_ids    smallint[],  -- rows of these metrics only (class deletes); NULL: all rows
    range_start   timestamptz NOT NULL,
    range_end     timestamptz NOT NULL,
    action        text NOT NULL CHECK (action IN ('drop_chunk', 'delete_rows', 'restore')),
    status        text NOT NULL
        CHECK (status IN ('archived', 'dropped', 'deleted', 'skipped', 'failed', 'restored')),
    row_count     bigint NOT NULL DEFAULT 0 CHECK (row_count >= 0),
    rows_held     bigint NOT NULL DEFAULT 0 CHECK (rows_held >= 0),
    archive_uri   text,  -- the Parquet file
    manifest_uri  text,
    file_sha256   text,
    content_checksum text,  -- order-independent sum of row hashes, see queries/retention.sql
    reason        text,  -- why skipped or failed
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retention_ledger_range CHECK (range_start < range_end)
);
CREATE INDEX retention_ledger_run ON rpm.retention_ledger (run_id);
CREATE INDEX retention_ledger_archives ON rpm.retention_ledger (target_schema, target_table, range_start)
    WHERE archive_uri IS NOT NULL;

-- Raw readings of patients under legal hold, copied out of chunks before they were dropped.
-- Same columns as rpm.readings, plus where they came from.
CREATE TABLE rpm.held_readings (
    measured_at        timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    value              double precision NOT NULL,
    batch_id           bigint NOT NULL,
    device_id          uuid NOT NULL,
    patient_id         uuid NOT NULL,
    metric_id          smallint NOT NULL,
    utc_offset_minutes smallint,
    client_reading_id  text,
    held_by_run        bigint NOT NULL REFERENCES rpm.retention_runs (run_id),
    held_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, metric_id, measured_at)
);
CREATE INDEX held_readings_patient ON rpm.held_readings (patient_id, metric_id, measured_at);

-- ---------------------------------------------------------------------------------------------
-- Re-chunk and repartition (migration 0008): ledgers of `rpmstore rechunk` / `repartition`.
-- ---------------------------------------------------------------------------------------------

-- One row per migration of one hypertable. At most one run per table is active (copying, or
-- cut over and not yet finalized): the old table is kept until `rechunk finalize` drops it.
CREATE TABLE rpm.rechunk_runs (
    run_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('rechunk', 'repartition')),
    table_schema    text NOT NULL,
    table_name      text NOT NULL,  -- the live name, before and after the swap
    shadow_name     text NOT NULL,  -- the new table's name while it is filled
    retired_name    text NOT NULL,  -- the old table's name between cutover and finalize
    source_dimensions jsonb NOT NULL,  -- [{column, kind, interval | partitions}], in order
    target_dimensions jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'copying'
                    CHECK (state IN ('copying', 'cut_over', 'rolled_back', 'finalized')),
    operator        text NOT NULL,  -- OS user@host that started it
    db_role         text NOT NULL DEFAULT current_user,
    started_at      timestamptz NOT NULL DEFAULT now(),
    verified_at     timestamptz,
    cut_over_at     timestamptz,
    rolled_back_at  timestamptz,
    finalized_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rechunk_runs_one_active ON rpm.rechunk_runs (table_schema, table_name)
    WHERE state IN ('copying', 'cut_over');

-- Progress and verification per source chunk: the copy resumes at next_block (a batch is a
-- range of the chunk's heap blocks, committed with this row), and a chunk is verified when the
-- new table holds exactly its rows (count and an order-independent checksum, one snapshot).
CREATE TABLE rpm.rechunk_chunks (
    run_id          bigint NOT NULL REFERENCES rpm.rechunk_runs (run_id),
    source_chunk    text NOT NULL,  -- schema-qualified chunk name
    range_start     timestamptz,
    range_end       timestamptz,
    predicate       text NOT NULL,  -- the chunk's dimension constraints: the rows it may hold
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'copying', 'copied', 'verified', 'mismatch')),
    total_blocks    bigint,  -- heap size when its copy started; later rows were dual-written
    next_block      bigint NOT NULL DEFAULT 0,
    batches         integer NOT NULL DEFAULT 0,
    copied_rows     bigint NOT NULL DEFAULT 0,  -- inserted by the copy (dual writes excluded)
    source_rows     bigint,
    source_checksum numeric,
    target_rows     bigint,
    target_checksum numeric,
    operator        text NOT NULL,
    discovered_at   timestamptz NOT NULL DEFAULT now(),
    copy_started_at timestamptz,
    copied_at       timestamptz,
    verified_at     timestamptz,
    PRIMARY KEY (run_id, source_chunk)
);

-- Lineage: which chunks of the new table hold the rows of each source chunk.
CREATE TABLE rpm.rechunk_lineage (
    run_id       bigint NOT NULL,
    source_chunk text NOT NULL,
    target_chunk text NOT NULL,
    row_count    bigint NOT NULL CHECK (row_count >= 0),
    checksum     numeric NOT NULL,
    operator     text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, source_chunk, target_chunk),
    FOREIGN KEY (run_id, source_chunk) REFERENCES rpm.rechunk_chunks (run_id, source_chunk)
);

-- Reconciliation: rows per UTC day in the old and the new table, read in one snapshot just
-- before the cutover; the cutover is refused unless every difference is zero.
CREATE TABLE rpm.rechunk_reconciliation (
    run_id     bigint NOT NULL REFERENCES rpm.rechunk_runs (run_id),
    day        date NOT NULL,
    old_rows   bigint NOT NULL,
    new_rows   bigint NOT NULL,
    difference bigint GENERATED ALWAYS AS (new_rows - old_rows) STORED,
    checked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, day)
);

-- ---------------------------------------------------------------------------------------------
-- Alert outbox (migration 0011): evaluation requests written in each ingest batch's transaction.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.alert_outbox (
    batch_id     bigint PRIMARY KEY,
    patient_ids  uuid[] NOT NULL,
    metric_ids   smallint[] NOT NULL,
    -- microseconds since 1970-01-01 UTC: the ingest path has them as integers already, and
    -- building a datetime per series to send timestamptz[] cost more than the rest of the row
    range_starts bigint[] NOT NULL,
    range_ends   bigint[] NOT NULL,
    lows         double precision[] NOT NULL,
    highs        double precision[] NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_outbox_arrays_align CHECK (
        cardinality(patient_ids) > 0
        AND cardinality(metric_ids) = cardinality(patient_ids)
        AND cardinality(range_starts) = cardinality(patient_ids)
        AND cardinality(range_ends) = cardinality(patient_ids)
        AND cardinality(lows) = cardinality(patient_ids)
        AND cardinality(highs) = cardinality(patient_ids))
);
COMMENT ON TABLE rpm.alert_outbox IS
    'Alert evaluations requested by committed ingest batches; claimed and deleted by alert workers.';

-- ---------------------------------------------------------------------------------------------
-- Rollup keys covering every column: timelines read buckets by index-only scans (migration 0014).
-- ---------------------------------------------------------------------------------------------
DO $covering$
BEGIN
    IF current_setting('timescaledb.license') = 'timescale' THEN
        -- Continuous aggregates: their own (patient, metric, bucket) indexes, widened. They live
        -- beside the materialization hypertables, in TimescaleDB's internal schema.
        DROP INDEX _timescaledb_internal.readings_1m_key;
        CREATE INDEX readings_1m_key ON rpm.readings_1m (patient_id, metric_id, bucket_start)
            INCLUDE (reading_count, value_sum, value_min, value_max, last_value, last_at);
        DROP INDEX _timescaledb_internal.readings_1h_key;
        CREATE INDEX readings_1h_key ON rpm.readings_1h (patient_id, metric_id, bucket_start)
            INCLUDE (reading_count, value_sum, value_min, value_max, last_value, last_at);
        DROP INDEX _timescaledb_internal.readings_1d_key;
        CREATE INDEX readings_1d_key ON rpm.readings_1d (patient_id, metric_id, bucket_start)
            INCLUDE (reading_count, value_sum, value_min, value_max, last_value, last_at);
    ELSE
        ALTER TABLE rpm.rollup_1m DROP CONSTRAINT rollup_1m_pkey;
        ALTER TABLE rpm.rollup_1m ADD CONSTRAINT rollup_1m_pkey
            PRIMARY KEY (patient_id, metric_id, bucket_start)
            INCLUDE (reading_count, value_sum, value_min, value_max, last_value, last_at);
        ALTER TABLE rpm.rollup_1h DROP CONSTRAINT rollup_1h_pkey;
        ALTER TABLE rpm.rollup_1h ADD CONSTRAINT rollup_1h_pkey
            PRIMARY KEY (patient_id, metric_id, bucket_start)
            INCLUDE (reading_count, value_sum, value_min, value_max, last_value, last_at);
        ALTER TABLE rpm.rollup_1d DROP CONSTRAINT rollup_1d_pkey;
        ALTER TABLE rpm.rollup_1d ADD CONSTRAINT rollup_1d_pkey
            PRIMARY KEY (patient_id, metric_id, bucket_start)
            INCLUDE (reading_count, value_sum, value_min, value_max, last_value, last_at);
    END IF;
END
$covering$;
