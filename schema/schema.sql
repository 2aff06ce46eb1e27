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
        -- Hypertables so retention can later drop old rollups by chunk, like raw readings.
        -- Chunks hold about as many rows as a raw chunk would for minute-level data.
        PERFORM create_hypertable('rpm.rollup_1m', by_range('bucket_start', INTERVAL '28 days'),
                                  create_default_indexes => false);
        PERFORM create_hypertable('rpm.rollup_1h', by_range('bucket_start', INTERVAL '365 days'),
                                  create_default_indexes => false);
        PERFORM create_hypertable('rpm.rollup_1d', by_range('bucket_start', INTERVAL '3650 days'),
                                  create_default_indexes => false);

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
    LANGUAGE plpgsql STABLE SECURITY INVOKER PARALLEL SAFE AS
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

-- =============================================================================================
-- Access: care-team scoping for the API role (migration 0006)
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
-- Who is acting (empty outside an API transaction).
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION rpm.acting_subject() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT nullif(current_setting('rpm.acting_subject', true), '') $$;

CREATE FUNCTION rpm.acting_roles() RETURNS text[]
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT coalesce(string_to_array(nullif(current_setting('rpm.acting_roles', true), ''), ','),
                   '{}') $$;

CREATE FUNCTION rpm.acting_is_admin() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT rpm.acting_subject() IS NOT NULL AND 'admin' = ANY (rpm.acting_roles()) $$;

-- The patients the acting user may see. SECURITY DEFINER: the API role has no access to the
-- membership tables' rows of other teams, and must not need any.
CREATE FUNCTION rpm.visible_patient_ids() RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
    SELECT p.patient_id
    FROM rpm.patients p
    WHERE rpm.acting_is_admin()
    UNION
    SELECT ctp.patient_id
    FROM rpm.clinicians c
    JOIN rpm.care_team_members m ON m.clinician_id = c.clinician_id
    JOIN rpm.care_teams t ON t.care_team_id = m.care_team_id AND t.deleted_at IS NULL
    JOIN rpm.care_team_patients ctp ON ctp.care_team_id = m.care_team_id
    WHERE c.subject = rpm.acting_subject()
      AND c.deleted_at IS NULL
      AND 'clinician' = ANY (rpm.acting_roles())
      AND m.care_team_id::text = ANY (
          string_to_array(nullif(current_setting('rpm.acting_care_teams', true), ''), ','))
$$;

CREATE FUNCTION rpm.can_see_patient(p_patient uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT p_patient IN (SELECT rpm.visible_patient_ids()) $$;

-- ---------------------------------------------------------------------------------------------
-- Row-level security on every table that holds patient data. The owner (migrations, ingest,
-- the alert engine, retention) is not subject to it: those run as trusted jobs, not as users.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE rpm.patients ENABLE ROW LEVEL SECURITY;
-- Admins see and register every patient. The admin test comes first and outside the function:
-- a row inserted by this statement is not yet in the function's snapshot.
CREATE POLICY patients_visible ON rpm.patients
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.patient_identities ENABLE ROW LEVEL SECURITY;
CREATE POLICY patient_identities_visible ON rpm.patient_identities
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.patient_identifiers ENABLE ROW LEVEL SECURITY;
CREATE POLICY patient_identifiers_visible ON rpm.patient_identifiers
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.care_team_patients ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_team_patients_visible ON rpm.care_team_patients FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
CREATE POLICY care_team_patients_admin ON rpm.care_team_patients
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.care_teams ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_teams_read ON rpm.care_teams FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY care_teams_admin ON rpm.care_teams
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.clinicians ENABLE ROW LEVEL SECURITY;
CREATE POLICY clinicians_read ON rpm.clinicians FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY clinicians_admin ON rpm.clinicians
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.care_team_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_team_members_read ON rpm.care_team_members FOR SELECT
    USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY care_team_members_admin ON rpm.care_team_members
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

-- Devices are not patient data, but only admins manage them; clinicians see the devices of
-- their patients through assignments.
ALTER TABLE rpm.devices ENABLE ROW LEVEL SECURITY;
CREATE POLICY devices_admin ON rpm.devices
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());
CREATE POLICY devices_of_visible_patients ON rpm.devices FOR SELECT
    USING (device_id IN (SELECT a.device_id FROM rpm.device_assignments a));

ALTER TABLE rpm.device_assignments ENABLE ROW LEVEL SECURITY;
CREATE POLICY device_assignments_visible ON rpm.device_assignments FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
CREATE POLICY device_assignments_admin ON rpm.device_assignments
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alert_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY alert_rules_read ON rpm.alert_rules FOR SELECT USING (rpm.acting_subject() IS NOT NULL);
CREATE POLICY alert_rules_admin ON rpm.alert_rules
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alert_rule_overrides ENABLE ROW LEVEL SECURITY;
CREATE POLICY alert_rule_overrides_visible ON rpm.alert_rule_overrides FOR SELECT
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));
CREATE POLICY alert_rule_overrides_admin ON rpm.alert_rule_overrides
    USING (rpm.acting_is_admin()) WITH CHECK (rpm.acting_is_admin());

ALTER TABLE rpm.alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY alerts_visible ON rpm.alerts
    USING (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()))
    WITH CHECK (rpm.acting_is_admin() OR patient_id IN (SELECT rpm.visible_patient_ids()));

ALTER TABLE rpm.alert_events ENABLE ROW LEVEL SECURITY;
-- The subquery on rpm.alerts is itself filtered by alerts_visible.
CREATE POLICY alert_events_visible ON rpm.alert_events
    USING (alert_id IN (SELECT a.alert_id FROM rpm.alerts a))
    WITH CHECK (alert_id IN (SELECT a.alert_id FROM rpm.alerts a)
                AND actor = rpm.acting_subject());

-- The audit trail: anyone acting may append a record about themselves; only admins read it.
ALTER TABLE rpm.audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_log_append ON rpm.audit_log FOR INSERT
    WITH CHECK (actor_subject = rpm.acting_subject());
CREATE POLICY audit_log_admin_read ON rpm.audit_log FOR SELECT USING (rpm.acting_is_admin());

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

-- ---------------------------------------------------------------------------------------------
-- The time series, read through scoping functions (owner's rights, the caller's scope).
-- ---------------------------------------------------------------------------------------------
-- Newest reading per metric for each requested patient the acting user may see. "Latest" is the
-- newest measurement time, never the last received; one index probe per (patient, metric).
CREATE FUNCTION rpm.latest_vitals(p_patients uuid[])
    RETURNS TABLE (patient_id uuid, metric_id smallint, measured_at timestamptz,
                   value double precision, utc_offset_minutes smallint, device_id uuid,
                   received_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
    SELECT v.patient_id, m.metric_id, r.measured_at, r.value, r.utc_offset_minutes, r.device_id,
           r.received_at
    FROM (SELECT DISTINCT unnest(p_patients) AS patient_id) v
    CROSS JOIN rpm.metrics m
    CROSS JOIN LATERAL (
        SELECT rd.measured_at, rd.value, rd.utc_offset_minutes, rd.device_id, rd.received_at
        FROM rpm.readings rd
        WHERE rd.patient_id = v.patient_id AND rd.metric_id = m.metric_id
        ORDER BY rd.measured_at DESC
        LIMIT 1
    ) r
    WHERE v.patient_id IN (SELECT rpm.visible_patient_ids())
$$;

REVOKE ALL ON FUNCTION rpm.visible_patient_ids(), rpm.can_see_patient(uuid),
    rpm.latest_vitals(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rpm.visible_patient_ids(), rpm.can_see_patient(uuid),
    rpm.latest_vitals(uuid[]) TO rpmstore_api;

-- The timeline of one patient's metric (raw, 1m, 1h, 1d; gaps explicit), for the acting user
-- only. rpm.vitals_timeline reads the rollups (continuous aggregates on TSL), which the API role
-- cannot read and which cannot carry RLS: this function checks the scope first and returns
-- nothing at all for a patient outside it. TimescaleDB's functions live in public.
CREATE FUNCTION rpm.patient_vitals_timeline(
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
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS
$$
BEGIN
    IF rpm.can_see_patient(p_patient) THEN
        RETURN QUERY
        SELECT t.bucket_start, t.count, t.min, t.max, t.avg, t.last, t.last_at
        FROM rpm.vitals_timeline(p_patient, p_metric, p_start, p_end, p_resolution) t;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION rpm.patient_vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    rpm.patient_vitals_timeline(uuid, smallint, timestamptz, timestamptz, text) TO rpmstore_api;

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
CREATE TRIGGER retention_policies_touch BEFORE UPDATE ON rpm.retention_policies
    FOR EACH ROW EXECUTE FUNCTION rpm.touch_updated_at();

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

-- The oldest measurement time rpm.readings keeps for a metric (NULL metric: the longest period
-- over all classes, i.e. the table's horizon), as of `p_at`; NULL when no policy applies.
-- Readings older than this are refused at ingest (reason too_old): stored, they would re-create
-- a chunk that the next retention run drops.
CREATE FUNCTION rpm.readings_retention_horizon(
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

-- Installed on the live table while the copy runs (and on the new one until finalize): rows are
-- mirrored into the other table by insert triggers only, so an UPDATE, DELETE or TRUNCATE would
-- make the two disagree. Refused with the run's message instead.
CREATE FUNCTION rpm.rechunk_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION '%: % is refused until the migration is finalized or rolled back',
        TG_ARGV[0], TG_OP
        USING ERRCODE = 'object_in_use';
END
$$;

-- =============================================================================================
-- 0009_fhir: the FHIR export's scoping function (raw readings with device and offset).
-- =============================================================================================
-- FHIR export: one patient's raw readings with their device and UTC offset, for the acting user
-- only. Needed because the API role has no grant on rpm.readings, and the existing scoping
-- function rpm.patient_vitals_timeline returns time and value only (a FHIR Observation also
-- needs the device reference, the device's offset and the client's reading id).
--
-- Rows come in (measured_at, device_id, resource_key) order, keyset-paginated on that key.
-- resource_key groups the two halves of a blood-pressure measurement ('blood_pressure' for
-- bp_systolic and bp_diastolic, the metric code otherwise), so a page never separates the
-- systolic from the diastolic of the same device and time: the export pairs them into one
-- panel Observation (85354-9) and continues after the whole group.
CREATE FUNCTION rpm.fhir_patient_readings(
    p_patient uuid,
    p_metrics smallint[],  -- NULL: every metric
    p_start timestamptz,   -- inclusive
    p_end timestamptz,     -- exclusive
    p_after_at timestamptz,  -- keyset: the last group of the previous page (NULL: first page)
    p_after_device uuid,
    p_after_key text,
    p_limit integer
) RETURNS TABLE (
    measured_at timestamptz,
    device_id uuid,
    resource_key text,
    metric_id smallint,
    value double precision,
    utc_offset_minutes smallint,
    client_reading_id text
)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF rpm.can_see_patient(p_patient) THEN
        RETURN QUERY
        SELECT r.measured_at, r.device_id, k.resource_key, r.metric_id, r.value,
               r.utc_offset_minutes, r.client_reading_id
        FROM rpm.readings r
        JOIN rpm.metrics m ON m.metric_id = r.metric_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN m.code IN ('bp_systolic', 'bp_diastolic') THEN 'blood_pressure'
                        ELSE m.code END AS resource_key
        ) k
        WHERE r.patient_id = p_patient
          AND r.measured_at >= p_start AND r.measured_at < p_end
          AND (p_metrics IS NULL OR r.metric_id = ANY (p_metrics))
          AND (p_after_at IS NULL
               OR (r.measured_at, r.device_id, k.resource_key)
                  > (p_after_at, p_after_device, p_after_key))
        ORDER BY r.measured_at, r.device_id, k.resource_key, r.metric_id
        LIMIT p_limit;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION
    rpm.fhir_patient_readings(uuid, smallint[], timestamptz, timestamptz, timestamptz, uuid,
                              text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    rpm.fhir_patient_readings(uuid, smallint[], timestamptz, timestamptz, timestamptz, uuid,
                              text, integer)
    TO rpmstore_api;

-- ---------------------------------------------------------------------------------------------
-- Timeline plans (migration 0010): rpm.vitals_timeline without parallel workers and with a
-- generic plan. A timeline reads a few rows of one patient, but the planner cannot see that the
-- on-the-fly tail of the rollup views is small and starts parallel workers, which cost more
-- (about 15 ms) than the whole query; planning the nested rollup views and the readings chunks
-- costs more than running them (2-3 ms), and the plan does not depend on the arguments.
-- ---------------------------------------------------------------------------------------------
ALTER FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION rpm.vitals_timeline(uuid, smallint, timestamptz, timestamptz, text)
    SET plan_cache_mode = force_generic_plan;

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
-- Device change notifications (migration 0012): ingest's device caches drop a changed device.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION rpm.notify_device_changed() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('rpm_device_changed', OLD.device_id::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('rpm_device_changed', NEW.device_id::text);  -- same payload: folded
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON rpm.devices
    FOR EACH ROW EXECUTE FUNCTION rpm.notify_device_changed();
CREATE TRIGGER device_assignments_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON rpm.device_assignments
    FOR EACH ROW EXECUTE FUNCTION rpm.notify_device_changed();

-- ---------------------------------------------------------------------------------------------
-- Scoping functions planned once per session (migration 0013): rpm.visible_patient_ids,
-- rpm.can_see_patient and rpm.latest_vitals in PL/pgSQL with a generic plan, same answers.
-- ---------------------------------------------------------------------------------------------
-- Scoping functions planned once per session (same answers as migration 0006, less work).
-- Every clinician read goes through rpm.visible_patient_ids() (the RLS policies' hashed
-- subplan), rpm.can_see_patient() or rpm.latest_vitals(). As SQL functions that cannot be
-- inlined (SECURITY DEFINER), their bodies were parsed and planned again in every statement
-- (0.7 ms for the visible set, 1.5 ms for latest vitals over the readings chunks: more than
-- running them). In PL/pgSQL the plans are cached per session; the plans do not depend on the
-- arguments (index probes), so the generic plan is forced.
-- - visible_patient_ids: the admin branch and the clinician branch are chosen once instead of
--   both being planned (an admin sees every patient, a superset of any team's).
-- - can_see_patient: one patient's membership is an index probe, not the whole visible set.
-- - latest_vitals: the requested patients are checked against the visible set once, before the
--   per-metric probes.

CREATE OR REPLACE FUNCTION rpm.visible_patient_ids() RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    IF rpm.acting_is_admin() THEN
        RETURN QUERY SELECT p.patient_id FROM rpm.patients p;
    ELSIF rpm.acting_subject() IS NOT NULL AND 'clinician' = ANY (rpm.acting_roles()) THEN
        -- The acting clinician's live teams first (a handful of rows), then their patients.
        RETURN QUERY
        WITH teams AS MATERIALIZED (
            SELECT t.care_team_id
            FROM rpm.clinicians c
            JOIN rpm.care_team_members m ON m.clinician_id = c.clinician_id
            JOIN rpm.care_teams t ON t.care_team_id = m.care_team_id AND t.deleted_at IS NULL
            WHERE c.subject = rpm.acting_subject()
              AND c.deleted_at IS NULL
              AND m.care_team_id::text = ANY (
                  string_to_array(nullif(current_setting('rpm.acting_care_teams', true), ''),
                                  ','))
        )
        SELECT DISTINCT ctp.patient_id
        FROM teams
        JOIN rpm.care_team_patients ctp ON ctp.care_team_id = teams.care_team_id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION rpm.can_see_patient(p_patient uuid) RETURNS boolean
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    IF p_patient IS NULL THEN
        RETURN NULL;  -- as NULL IN (...) was
    ELSIF rpm.acting_is_admin() THEN
        RETURN EXISTS (SELECT FROM rpm.patients p WHERE p.patient_id = p_patient);
    ELSIF rpm.acting_subject() IS NOT NULL AND 'clinician' = ANY (rpm.acting_roles()) THEN
        RETURN EXISTS (
            SELECT
            FROM rpm.care_team_patients ctp
            JOIN rpm.care_teams t ON t.care_team_id = ctp.care_team_id AND t.deleted_at IS NULL
            JOIN rpm.care_team_members m ON m.care_team_id = ctp.care_team_id
            JOIN rpm.clinicians c ON c.clinician_id = m.clinician_id
            WHERE ctp.patient_id = p_patient
              AND c.subject = rpm.acting_subject()
              AND c.deleted_at IS NULL
              AND m.care_team_id::text = ANY (
                  string_to_array(nullif(current_setting('rpm.acting_care_teams', true), ''),
                                  ',')));
    END IF;
    RETURN false;
END
$$;

-- Newest reading per metric for each requested patient the acting user may see. "Latest" is the
-- newest measurement time, never the last received; one index probe per (patient, metric).
CREATE OR REPLACE FUNCTION rpm.latest_vitals(p_patients uuid[])
    RETURNS TABLE (patient_id uuid, metric_id smallint, measured_at timestamptz,
                   value double precision, utc_offset_minutes smallint, device_id uuid,
                   received_at timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan AS
$$
BEGIN
    RETURN QUERY
    WITH visible AS MATERIALIZED (
        SELECT DISTINCT requested.id AS patient_id
        FROM unnest(p_patients) AS requested (id)
        WHERE requested.id IN (SELECT rpm.visible_patient_ids())
    )
    SELECT v.patient_id, m.metric_id, r.measured_at, r.value, r.utc_offset_minutes,
           r.device_id, r.received_at
    FROM visible v
    CROSS JOIN rpm.metrics m
    CROSS JOIN LATERAL (
        SELECT rd.measured_at, rd.value, rd.utc_offset_minutes, rd.device_id, rd.received_at
        FROM rpm.readings rd
        WHERE rd.patient_id = v.patient_id AND rd.metric_id = m.metric_id
        ORDER BY rd.measured_at DESC
        LIMIT 1
    ) r;
END
$$;

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
