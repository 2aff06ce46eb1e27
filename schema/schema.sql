-- Canonical schema: the whole current rpmstore schema in one file, for reading and for the
-- test that proves it equals the result of applying every migration in order. Any migration
-- that changes the schema changes this file in the same commit.
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

CREATE FUNCTION rpm.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

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

CREATE FUNCTION rpm.patient_for_device_at(p_device_id uuid, p_at timestamptz) RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$
    SELECT patient_id
    FROM rpm.device_assignments
    WHERE device_id = p_device_id AND valid_during @> p_at
$$;

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
-- Ingest quarantine: every reading that was received but not stored, with the raw bytes.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE rpm.ingest_quarantine (
    quarantine_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    source          text NOT NULL CHECK (source IN ('http', 'mqtt', 'fhir', 'import')),
    reason          text NOT NULL CHECK (reason ~ '^[a-z][a-z0-9_]*$'),  -- machine-readable
    detail          text NOT NULL,  -- for a person
    raw_payload     bytea NOT NULL,  -- exactly the bytes received
    reading_index   integer,  -- position of the offending reading, when the payload parsed
    claimed_device  text,  -- device id as the sender claimed it (may be unknown or malformed)
    topic           text,  -- MQTT topic, when it came over MQTT
    created_at      timestamptz NOT NULL DEFAULT now(),
    batch_id        bigint  -- the ingest batch that quarantined it (lineage)
);
CREATE INDEX ingest_quarantine_received ON rpm.ingest_quarantine (received_at);
CREATE INDEX ingest_quarantine_reason ON rpm.ingest_quarantine (reason, received_at);

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

CREATE FUNCTION rpm.refuse_audit_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'rpm.audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON rpm.audit_log
    FOR EACH ROW EXECUTE FUNCTION rpm.refuse_audit_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON rpm.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION rpm.refuse_audit_change();

-- ---------------------------------------------------------------------------------------------
-- updated_at maintenance.
-- ---------------------------------------------------------------------------------------------
CREATE TRIGGER patients_touch BEFORE UPDATE ON rpm.patients
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER patient_identities_touch BEFORE UPDATE ON rpm.patient_identities
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER care_teams_touch BEFORE UPDATE ON rpm.care_teams
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER clinicians_touch BEFORE UPDATE ON rpm.clinicians
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER devices_touch BEFORE UPDATE ON rpm.devices
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER device_assignments_touch BEFORE UPDATE ON rpm.device_assignments
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER metrics_touch BEFORE UPDATE ON rpm.metrics
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER alert_rules_touch BEFORE UPDATE ON rpm.alert_rules
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER alert_rule_overrides_touch BEFORE UPDATE ON rpm.alert_rule_overrides
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();
CREATE TRIGGER alerts_touch BEFORE UPDATE ON rpm.alerts
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();

-- ---------------------------------------------------------------------------------------------
-- Rollups (migration 0004): 1-minute, 1-hour and 1-day aggregates per patient and metric, and
-- rpm.vitals_timeline. Both editions expose rpm.readings_1m, rpm.readings_1h and
-- rpm.readings_1d with the same columns and the same meaning (materialized buckets below a
-- watermark, the rest aggregated on the fly). TSL edition: hierarchical continuous aggregates
-- with refresh policies. Apache edition: rpmstore's own rollup tables behind views, maintained
-- by the refresher (schema/rollups.py) from rpm.rollup_invalidations. The edition is read when
-- the schema is built.
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
        -- a coarser bucket is materialized once it ends at or before it). The views aggregate
        -- the rest on the fly. Separate from rpm.rollup_watermark on purpose: the refresher
        -- locks that table exclusively for a moment, and readers must never wait for it.
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
        -- Plain tables: a timeline reads one patient's rows through the primary key, and the
        -- minute level holds a fraction of the raw rows. (Retention of rollups, when it comes,
        -- may make them hypertables to drop old rollups by chunk.)

        -- The same columns, in the same order, as the continuous aggregates of the TSL edition.
        CREATE VIEW rpm.readings_1m AS
        SELECT bucket_start, patient_id, metric_id, reading_count, value_sum, value_min,
               value_max, last_value, last_at
        FROM rpm.rollup_1m
        WHERE bucket_start < (SELECT materialized_until FROM rpm.rollup_progress)
        UNION ALL
        SELECT time_bucket(INTERVAL '1 minute', measured_at), patient_id, metric_id,
               count(*), sum(value), min(value), max(value),
               (max(ARRAY[date_part('epoch', measured_at - timestamptz 'epoch'), value]))[2],
               max(measured_at)
        FROM rpm.readings
        WHERE measured_at >= (SELECT materialized_until FROM rpm.rollup_progress)
        GROUP BY 1, 2, 3;

        CREATE VIEW rpm.readings_1h AS
        SELECT bucket_start, patient_id, metric_id, reading_count, value_sum, value_min,
               value_max, last_value, last_at
        FROM rpm.rollup_1h
        WHERE bucket_start < (SELECT time_bucket(INTERVAL '1 hour', materialized_until)
                              FROM rpm.rollup_progress)
        UNION ALL
        SELECT time_bucket(INTERVAL '1 hour', bucket_start), patient_id, metric_id,
               sum(reading_count)::bigint, sum(value_sum), min(value_min), max(value_max),
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2],
               max(last_at)
        FROM rpm.readings_1m
        WHERE bucket_start >= (SELECT time_bucket(INTERVAL '1 hour', materialized_until)
                               FROM rpm.rollup_progress)
        GROUP BY 1, 2, 3;

        CREATE VIEW rpm.readings_1d AS
        SELECT bucket_start, patient_id, metric_id, reading_count, value_sum, value_min,
               value_max, last_value, last_at
        FROM rpm.rollup_1d
        WHERE bucket_start < (SELECT time_bucket(INTERVAL '1 day', materialized_until)
                              FROM rpm.rollup_progress)
        UNION ALL
        SELECT time_bucket(INTERVAL '1 day', bucket_start), patient_id, metric_id,
               sum(reading_count)::bigint, sum(value_sum), min(value_min), max(value_max),
               (max(ARRAY[date_part('epoch', last_at - timestamptz 'epoch'), last_value]))[2],
               max(last_at)
        FROM rpm.readings_1h
        WHERE bucket_start >= (SELECT time_bucket(INTERVAL '1 day', materialized_until)
                               FROM rpm.rollup_progress)
        GROUP BY 1, 2, 3;
    END IF;
END
$rollups$;

-- One row per bucket in [p_start, p_end) for '1m' | '1h' | '1d', buckets aligned to UTC: every
-- bucket that overlaps the range, each aggregated over its whole bucket, including explicit gap
-- rows (count 0, the rest NULL) where nothing was measured. 'raw' returns the readings
-- themselves (count 1 each, no gap rows), ordered by measurement time.
-- SECURITY INVOKER on purpose: callers get exactly their own access to the rollups; scoping
-- to a care team belongs in a definer function that wraps this one.
CREATE FUNCTION rpm.vitals_timeline(
    p_patient uuid,
    p_metric smallint,
    p_start timestamptz,
    p_end timestamptz,
    p_resolution text
) RETURNS TABLE (
    bucket_start timestamptz,
    count bigint,
    min double precision,
    max double precision,
    avg double precision,
    last double precision,
    last_at timestamptz
)
    LANGUAGE plpgsql STABLE SECURITY INVOKER PARALLEL SAFE
    -- A timeline reads a few rows of one patient, but the planner cannot see that the on-the-fly
    -- tail (readings after the watermark) is small and starts parallel workers, which cost more
    -- (about 15 ms) than the whole query. Planning the nested rollup views and the chunks of
    -- the readings hypertable costs more than running them (2-3 ms), and the plan does not
    -- depend on the arguments (index ranges on patient, metric and time): plan once a session.
    SET max_parallel_workers_per_gather = 0
    SET plan_cache_mode = force_generic_plan
AS
$$
#variable_conflict use_column
DECLARE
    -- 24 hours, not 1 day: timestamptz + '1 day' follows the session's time zone across DST.
    width constant interval := CASE p_resolution
        WHEN '1m' THEN INTERVAL '1 minute'
        WHEN '1h' THEN INTERVAL '1 hour'
        WHEN '1d' THEN INTERVAL '24 hours'
    END;
    first_bucket timestamptz;
BEGIN
    IF p_resolution IS DISTINCT FROM 'raw' AND width IS NULL THEN
        RAISE EXCEPTION 'unknown resolution %: expected raw, 1m, 1h or 1d', p_resolution
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT (isfinite(p_start) AND isfinite(p_end)) THEN
        RAISE EXCEPTION 'timeline bounds must be finite times'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_resolution = 'raw' THEN
        RETURN QUERY
        SELECT r.measured_at, 1::bigint, r.value, r.value, r.value, r.value, r.measured_at
        FROM rpm.readings r
        WHERE r.patient_id = p_patient AND r.metric_id = p_metric
          AND r.measured_at >= p_start AND r.measured_at < p_end
        ORDER BY r.measured_at, r.value;
        RETURN;
    END IF;
    first_bucket := time_bucket(width, p_start);
    IF p_resolution = '1m' THEN
        RETURN QUERY
        SELECT g.b, coalesce(v.reading_count, 0), v.value_min, v.value_max,
               v.value_sum / v.reading_count, v.last_value, v.last_at
        FROM generate_series(first_bucket, p_end - INTERVAL '1 microsecond', width) AS g (b)
        LEFT JOIN (
            SELECT * FROM rpm.readings_1m x
            WHERE x.patient_id = p_patient AND x.metric_id = p_metric
              AND x.bucket_start >= first_bucket AND x.bucket_start < p_end
        ) v ON v.bucket_start = g.b
        ORDER BY g.b;
    ELSIF p_resolution = '1h' THEN
        RETURN QUERY
        SELECT g.b, coalesce(v.reading_count, 0), v.value_min, v.value_max,
               v.value_sum / v.reading_count, v.last_value, v.last_at
        FROM generate_series(first_bucket, p_end - INTERVAL '1 microsecond', width) AS g (b)
        LEFT JOIN (
            SELECT * FROM rpm.readings_1h x
            WHERE x.patient_id = p_patient AND x.metric_id = p_metric
              AND x.bucket_start >= first_bucket AND x.bucket_start < p_end
        ) v ON v.bucket_start = g.b
        ORDER BY g.b;
    ELSE
        RETURN QUERY
        SELECT g.b, coalesce(v.reading_count, 0), v.value_min, v.value_max,
               v.value_sum / v.reading_count, v.last_value, v.last_at
        FROM generate_series(first_bucket, p_end - INTERVAL '1 microsecond', width) AS g (b)
        LEFT JOIN (
            SELECT * FROM rpm.readings_1d x
            WHERE x.patient_id = p_patient AND x.metric_id = p_metric
              AND x.bucket_start >= first_bucket AND x.bucket_start < p_end
        ) v ON v.bucket_start = g.b
        ORDER BY g.b;
    END IF;
END
$$;
