-- The alert evaluator's statements (asyncpg: $n placeholders). One evaluation = one
-- transaction, after the ingest COMMIT, over the (patient, metric, oldest and newest
-- measured_at, lowest and highest value) ranges that the committed batches touched ($1
-- patient ids, $2 metric ids, $3/$4 range starts/ends, $5/$6 lowest/highest values, as
-- parallel arrays). Every statement works on all touched ranges at once.
--
-- Semantics (order-independent where it can be, and never retracting what clinicians saw):
-- * A reading breaches an above/below rule when its value is strictly beyond the effective
--   threshold (a patient's override, else the rule's).
-- * A breaching reading *qualifies* when the run of consecutive breaching readings it belongs
--   to (no in-range reading in between, by measurement time) started at least sustained_for
--   before it: every reading of the window breaches and the window is covered. sustained_for
--   0 means every breaching reading qualifies.
-- * An alert spans [first_breach_at, last_breach_at]: the start of its breach run and its
--   newest breaching reading. An active alert, or one the engine auto-resolved, absorbs every
--   qualifying reading of the same run, earlier or later, however late it arrives. An
--   auto-resolving alert resolves when an in-range reading newer than its last breach exists;
--   a late in-range reading older than that never resolves it. Rules without auto_resolve
--   absorb every later breach until a person resolves the alert.
-- * A qualifying run no alert covers opens one; a run that an in-range reading already
--   followed (late data about an episode that is over) is recorded as an alert opened and
--   auto-resolved at once, which is what evaluating in measurement order would have left.
--   Alerts of one patient and rule never overlap.
-- * breach_count is the number of breaching readings in the alert's span; it, peak_value and
--   last_value grow by the newly covered time only (a new reading inside the span recounts
--   it), so evaluating the same range twice changes nothing (retries are safe).

-- name: lock_patients
-- Serialise with other evaluators and the sweep: one advisory lock per patient bucket, in
-- ascending order (no deadlocks between transactions locking overlapping sets).
SELECT count(pg_advisory_xact_lock(1634497652, bucket))
FROM (
    SELECT DISTINCT rpm.alert_lock_bucket(patient_id) AS bucket
    FROM unnest($1::uuid[]) AS t(patient_id)
    ORDER BY 1
) buckets;

-- name: create_window
-- The readings each (patient, rule) evaluation looks at; emptied at every COMMIT.
CREATE TEMP TABLE IF NOT EXISTS alert_window (
    patient_id    uuid NOT NULL,
    rule_id       uuid NOT NULL,
    metric_id     smallint NOT NULL,
    kind          text NOT NULL,
    threshold     double precision NOT NULL,
    auto_resolve  boolean NOT NULL,
    measured_at   timestamptz NOT NULL,
    value         double precision NOT NULL,
    in_window     boolean NOT NULL,  -- false: a neighbour outside the touched range
    breach        boolean NOT NULL,
    qualifies     boolean NOT NULL,
    run           bigint NOT NULL,  -- readings of one breach run share it (per patient, rule)
    run_start     timestamptz,  -- first breaching reading of the run (as far as the window sees)
    run_end       timestamptz,  -- newest qualifying reading of the run
    rule_end      timestamptz  -- newest qualifying reading of the (patient, rule) window
) ON COMMIT DELETE ROWS;

-- name: fill_window
-- Per touched (patient, metric) and enabled above/below rule that the new readings can matter
-- to (one of them breaches, or an alert is active): the readings from the touched range to
-- sustained_for after it, or after the next reading if that one breaches (a late reading can
-- complete a run that later readings belong to), the nearest reading after that, and two neighbours before the range that tell where the
-- breach run at its start began: the newest in-range reading of the sustained_for before it
-- (else the newest reading before that), and the first reading after that one. Runs are
-- numbered by counting in-range readings. $5/$6: lowest/highest new value (NULL: unknown).
WITH touched AS (
    SELECT patient_id, metric_id, min(range_start) AS range_start, max(range_end) AS range_end,
           CASE WHEN bool_and(low IS NOT NULL) THEN min(low) END AS low,
           CASE WHEN bool_and(high IS NOT NULL) THEN max(high) END AS high
    FROM unnest($1::uuid[], $2::smallint[], $3::timestamptz[], $4::timestamptz[],
                $5::float8[], $6::float8[])
        AS t(patient_id, metric_id, range_start, range_end, low, high)
    GROUP BY patient_id, metric_id
), rules AS (
    SELECT t.patient_id, t.metric_id, t.range_start, t.range_end, r.rule_id, r.kind,
           r.auto_resolve,
           coalesce(o.threshold, r.threshold) AS threshold,
           coalesce(o.sustained_for, r.sustained_for) AS sustained_for
    FROM touched t
    JOIN rpm.alert_rules r
      ON r.metric_id = t.metric_id AND r.kind IN ('above', 'below') AND r.deleted_at IS NULL
    LEFT JOIN rpm.alert_rule_overrides o
      ON o.rule_id = r.rule_id AND o.patient_id = t.patient_id
    WHERE coalesce(o.enabled, r.enabled)
      AND (t.low IS NULL
           OR rpm.alert_breaches(r.kind, coalesce(o.threshold, r.threshold),
                                 CASE r.kind WHEN 'above' THEN t.high ELSE t.low END)
           OR EXISTS (SELECT 1 FROM rpm.alerts a
                      WHERE a.patient_id = t.patient_id AND a.rule_id = r.rule_id
                        AND a.status <> 'resolved'))
), anchored AS (
    SELECT ru.*,
           coalesce(
               (SELECT r.measured_at FROM rpm.readings r
                WHERE r.patient_id = ru.patient_id AND r.metric_id = ru.metric_id
                  AND r.measured_at >= ru.range_start - ru.sustained_for
                  AND r.measured_at < ru.range_start
                  AND NOT rpm.alert_breaches(ru.kind, ru.threshold, r.value)
                ORDER BY r.measured_at DESC LIMIT 1),
               (SELECT r.measured_at FROM rpm.readings r
                WHERE r.patient_id = ru.patient_id AND r.metric_id = ru.metric_id
                  AND r.measured_at < ru.range_start - ru.sustained_for
                ORDER BY r.measured_at DESC LIMIT 1),
               '-infinity') AS anchor,
           -- The end of the span read as the window: sustained_for after the range, or after
           -- the first reading past the range when that one breaches. A late reading that
           -- starts a run earlier can make readings qualify up to sustained_for after the run's
           -- old start (the reading right after the range; later ones qualified already).
           coalesce(
               (SELECT CASE WHEN rpm.alert_breaches(ru.kind, ru.threshold, r.value)
                            THEN r.measured_at ELSE ru.range_end END
                FROM rpm.readings r
                WHERE r.patient_id = ru.patient_id AND r.metric_id = ru.metric_id
                  AND r.measured_at > ru.range_end
                ORDER BY r.measured_at LIMIT 1),
               ru.range_end) + ru.sustained_for AS window_end
    FROM rules ru
), seen AS (
    SELECT an.*, x.measured_at, x.value, x.in_window,
           rpm.alert_breaches(an.kind, an.threshold, x.value) AS breach
    FROM anchored an
    CROSS JOIN LATERAL (
        SELECT r.measured_at, r.value, true AS in_window
        FROM rpm.readings r
        WHERE r.patient_id = an.patient_id AND r.metric_id = an.metric_id
          AND r.measured_at BETWEEN an.range_start AND an.window_end
        UNION ALL
        SELECT r.measured_at, r.value, false
        FROM rpm.readings r
        WHERE r.patient_id = an.patient_id AND r.metric_id = an.metric_id
          AND r.measured_at = an.anchor
        UNION ALL
        (SELECT r.measured_at, r.value, false
         FROM rpm.readings r
         WHERE r.patient_id = an.patient_id AND r.metric_id = an.metric_id
           AND r.measured_at > an.anchor AND r.measured_at < an.range_start
         ORDER BY r.measured_at
         LIMIT 1)
        UNION ALL
        (SELECT r.measured_at, r.value, false
         FROM rpm.readings r
         WHERE r.patient_id = an.patient_id AND r.metric_id = an.metric_id
           AND r.measured_at > an.window_end
         ORDER BY r.measured_at
         LIMIT 1)
    ) x
), numbered AS (
    -- At one instant a breaching reading sorts before an in-range one (two devices), so the
    -- in-range reading ends the run.
    SELECT *, count(*) FILTER (WHERE NOT breach) OVER (
                  PARTITION BY patient_id, rule_id
                  ORDER BY measured_at, breach DESC
                  ROWS UNBOUNDED PRECEDING) AS run
    FROM seen
), runs AS (
    SELECT *, min(measured_at) FILTER (WHERE breach) OVER (PARTITION BY patient_id, rule_id, run)
                  AS run_start
    FROM numbered
), qualified AS (
    SELECT *, breach AND run_start <= measured_at - sustained_for AS qualifies
    FROM runs
)
INSERT INTO alert_window (patient_id, rule_id, metric_id, kind, threshold, auto_resolve,
                          measured_at, value, in_window, breach, qualifies, run, run_start,
                          run_end, rule_end)
SELECT patient_id, rule_id, metric_id, kind, threshold, auto_resolve, measured_at, value,
       in_window, breach, qualifies, run, run_start,
       max(measured_at) FILTER (WHERE qualifies) OVER (PARTITION BY patient_id, rule_id, run),
       max(measured_at) FILTER (WHERE qualifies) OVER (PARTITION BY patient_id, rule_id)
FROM qualified;

-- name: extend_active_alerts
-- Active alerts, and alerts the engine auto-resolved, absorb the qualifying readings of their
-- own run (no in-range reading between the reading and the alert's span); active alerts
-- without auto-resolve absorb every qualifying reading that no resolved alert covers. Counts and extremes grow by the breaching readings
-- of the newly covered time; a late reading inside the span makes them recounted over it.
WITH rules AS (
    SELECT DISTINCT patient_id, rule_id, metric_id, kind, threshold, auto_resolve
    FROM alert_window
), active AS (
    SELECT a.alert_id, a.first_breach_at, a.last_breach_at, ru.*,
           (SELECT r.measured_at FROM rpm.readings r
            WHERE r.patient_id = ru.patient_id AND r.metric_id = ru.metric_id
              AND r.measured_at > a.last_breach_at
              AND NOT rpm.alert_breaches(ru.kind, ru.threshold, r.value)
            ORDER BY r.measured_at LIMIT 1) AS in_range_after,
           (SELECT r.measured_at FROM rpm.readings r
            WHERE r.patient_id = ru.patient_id AND r.metric_id = ru.metric_id
              AND r.measured_at < a.first_breach_at
              AND NOT rpm.alert_breaches(ru.kind, ru.threshold, r.value)
            ORDER BY r.measured_at DESC LIMIT 1) AS in_range_before
    FROM rules ru
    -- Alerts the engine resolved are history it still completes: a late breaching reading of
    -- their run extends them. What a person resolved stays as they closed it.
    JOIN rpm.alerts a
      ON a.patient_id = ru.patient_id AND a.rule_id = ru.rule_id
     AND (a.status <> 'resolved' OR (a.resolution = 'auto' AND ru.auto_resolve))
), absorbed AS (
    SELECT act.alert_id, act.patient_id, act.metric_id, act.kind, act.threshold,
           act.first_breach_at AS old_first, act.last_breach_at AS old_last,
           least(act.first_breach_at, min(w.run_start)) AS first_breach_at,
           greatest(act.last_breach_at, max(w.measured_at)) AS last_breach_at,
           -- A new breaching reading inside the span (qualifying or not): recount the span.
           EXISTS (SELECT 1 FROM alert_window x
                   WHERE x.patient_id = act.patient_id AND x.rule_id = act.rule_id
                     AND x.in_window AND x.breach
                     AND x.measured_at BETWEEN act.first_breach_at AND act.last_breach_at)
               AS inside
    FROM active act
    LEFT JOIN alert_window w
      ON w.patient_id = act.patient_id AND w.rule_id = act.rule_id
     AND w.qualifies AND w.in_window
     AND CASE WHEN act.auto_resolve
              THEN (act.in_range_before IS NULL OR w.measured_at > act.in_range_before)
                   AND (act.in_range_after IS NULL OR w.measured_at < act.in_range_after)
              ELSE NOT EXISTS (
                  SELECT 1 FROM rpm.alerts old
                  WHERE old.patient_id = act.patient_id AND old.rule_id = act.rule_id
                    AND old.status = 'resolved'
                    AND w.measured_at BETWEEN old.first_breach_at AND old.last_breach_at)
         END
    GROUP BY act.alert_id, act.patient_id, act.metric_id, act.kind, act.threshold,
             act.first_breach_at, act.last_breach_at, act.rule_id
), counted AS (
    -- Breaching readings of the time newly covered (all of the span after a late reading
    -- inside it): evaluating the same readings again adds nothing.
    SELECT ab.*, s.breaches, s.peak, s.newest_value
    FROM absorbed ab
    CROSS JOIN LATERAL (
        SELECT count(*) AS breaches,
               CASE ab.kind WHEN 'above' THEN max(r.value) ELSE min(r.value) END AS peak,
               (array_agg(r.value ORDER BY r.measured_at DESC))[1] AS newest_value
        FROM rpm.readings r
        WHERE r.patient_id = ab.patient_id AND r.metric_id = ab.metric_id
          AND r.measured_at BETWEEN ab.first_breach_at AND ab.last_breach_at
          AND (ab.inside OR r.measured_at < ab.old_first OR r.measured_at > ab.old_last)
          AND rpm.alert_breaches(ab.kind, ab.threshold, r.value)
    ) s
    WHERE ab.inside OR ab.first_breach_at < ab.old_first OR ab.last_breach_at > ab.old_last
)
UPDATE rpm.alerts a
SET first_breach_at = c.first_breach_at,
    last_breach_at = c.last_breach_at,
    breach_count = CASE WHEN c.inside THEN greatest(c.breaches, 1)
                        ELSE a.breach_count + c.breaches END,
    peak_value = CASE WHEN c.inside OR a.peak_value IS NULL THEN c.peak
                      WHEN c.kind = 'above' THEN greatest(a.peak_value, c.peak)
                      ELSE least(a.peak_value, c.peak) END,
    last_value = CASE WHEN c.last_breach_at > c.old_last OR c.inside THEN c.newest_value
                      ELSE a.last_value END
FROM counted c
WHERE a.alert_id = c.alert_id
  AND (a.status <> 'resolved' OR a.resolution = 'auto')
  -- Only real changes: evaluating the same readings again writes nothing.
  AND (a.first_breach_at, a.last_breach_at, a.breach_count, a.peak_value, a.last_value)
      IS DISTINCT FROM
      (c.first_breach_at, c.last_breach_at,
       CASE WHEN c.inside THEN greatest(c.breaches, 1) ELSE a.breach_count + c.breaches END,
       CASE WHEN c.inside OR a.peak_value IS NULL THEN c.peak
            WHEN c.kind = 'above' THEN greatest(a.peak_value, c.peak)
            ELSE least(a.peak_value, c.peak) END,
       CASE WHEN c.last_breach_at > c.old_last OR c.inside THEN c.newest_value
            ELSE a.last_value END)
RETURNING a.alert_id;

-- name: resolve_back_in_range
-- Auto-resolving alerts with an in-range reading newer than their last breach. The row lock
-- (FOR UPDATE) orders this with a clinician's acknowledgement of the same alert, so the event
-- records the status it really left.
WITH rules AS (
    SELECT DISTINCT patient_id, rule_id, metric_id, kind, threshold
    FROM alert_window
    WHERE auto_resolve
), target AS (
    SELECT a.alert_id, a.status
    FROM rules ru
    JOIN rpm.alerts a
      ON a.patient_id = ru.patient_id AND a.rule_id = ru.rule_id AND a.status <> 'resolved'
    -- An ordered probe, not EXISTS: for EXISTS the planner expects some of the thousands of
    -- rows it estimates to turn up early in a sequential scan, and at tens of millions of
    -- readings that scan reads a whole chunk (0.7 s) to find nothing.
    WHERE (SELECT r.measured_at FROM rpm.readings r
           WHERE r.patient_id = ru.patient_id AND r.metric_id = ru.metric_id
             AND r.measured_at > a.last_breach_at
             AND NOT rpm.alert_breaches(ru.kind, ru.threshold, r.value)
           ORDER BY r.measured_at LIMIT 1) IS NOT NULL
    FOR UPDATE OF a
), resolved AS (
    UPDATE rpm.alerts a
    SET status = 'resolved', resolved_at = now(), resolved_by = 'rpmstore', resolution = 'auto'
    FROM target t
    WHERE a.alert_id = t.alert_id AND a.status <> 'resolved'
    RETURNING a.alert_id, t.status AS from_status
), events AS (
    INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status, note)
    SELECT alert_id, 'rpmstore', from_status, 'resolved', 'back in range'
    FROM resolved
)
SELECT alert_id FROM resolved;

-- name: open_new_alerts
-- Qualifying readings that no alert of the rule covers yet form new alerts, one per breach run
-- (one in all for rules without auto-resolve). A run already followed by an in-range reading
-- is over: it is recorded as opened and auto-resolved at once. Every new alert keeps a
-- snapshot of the rule and the thresholds (override included) that fired it.
WITH uncovered AS (
    -- A run that reaches into an alert a person resolved starts (or ends) a new alert at its
    -- first (last) qualifying reading outside that alert, so alerts never overlap.
    SELECT w.*,
           EXISTS (SELECT 1 FROM rpm.alerts a
                   WHERE a.patient_id = w.patient_id AND a.rule_id = w.rule_id
                     AND w.run_start BETWEEN a.first_breach_at AND a.last_breach_at)
               AS start_covered,
           EXISTS (SELECT 1 FROM rpm.alerts a
                   WHERE a.patient_id = w.patient_id AND a.rule_id = w.rule_id
                     AND CASE WHEN w.auto_resolve THEN w.run_end ELSE w.rule_end END
                         BETWEEN a.first_breach_at AND a.last_breach_at)
               AS end_covered
    FROM alert_window w
    WHERE w.qualifies AND w.in_window
      AND NOT EXISTS (
          SELECT 1 FROM rpm.alerts a
          WHERE a.patient_id = w.patient_id AND a.rule_id = w.rule_id
            AND w.measured_at BETWEEN a.first_breach_at AND a.last_breach_at)
      AND NOT EXISTS (
          -- an active alert of a rule without auto-resolve takes everything (extend_active_alerts)
          SELECT 1 FROM rpm.alerts a
          WHERE a.patient_id = w.patient_id AND a.rule_id = w.rule_id
            AND a.status <> 'resolved' AND NOT w.auto_resolve)
), episodes AS (
    -- The run's newest qualifying reading may lie just past the window.
    SELECT patient_id, rule_id, metric_id, kind, threshold, auto_resolve,
           CASE WHEN auto_resolve THEN run END AS run,
           min(CASE WHEN start_covered THEN measured_at ELSE run_start END) AS first_breach_at,
           max(CASE WHEN end_covered THEN measured_at
                    WHEN auto_resolve THEN run_end ELSE rule_end END) AS last_breach_at
    FROM uncovered
    GROUP BY patient_id, rule_id, metric_id, kind, threshold, auto_resolve,
             CASE WHEN auto_resolve THEN run END
), classified AS MATERIALIZED (
    -- Materialized: the statement reads "over" four times, and an inlined CTE probed the
    -- readings for each. An ordered probe (as in resolve_back_in_range), not EXISTS.
    SELECT sp.*,
           sp.auto_resolve AND (
               SELECT r.measured_at FROM rpm.readings r
               WHERE r.patient_id = sp.patient_id AND r.metric_id = sp.metric_id
                 AND r.measured_at > sp.last_breach_at
                 AND NOT rpm.alert_breaches(sp.kind, sp.threshold, r.value)
               ORDER BY r.measured_at LIMIT 1) IS NOT NULL AS over
    FROM episodes sp
), inserted AS (
    INSERT INTO rpm.alerts (rule_id, patient_id, status, severity, rule_snapshot,
                            first_breach_at, last_breach_at, last_value, peak_value,
                            breach_count, resolved_at, resolved_by, resolution)
    SELECT c.rule_id, c.patient_id,
           CASE WHEN c.over THEN 'resolved' ELSE 'open' END,
           r.severity,
           jsonb_build_object(
               'rule_id', r.rule_id, 'name', r.name, 'metric', m.code,
               'unit', m.canonical_unit, 'kind', r.kind, 'severity', r.severity,
               'threshold', c.threshold,
               'sustained_for', coalesce(o.sustained_for, r.sustained_for)::text,
               'auto_resolve', r.auto_resolve,
               'rule_threshold', r.threshold,
               'rule_sustained_for', r.sustained_for::text,
               'rule_updated_at', r.updated_at,
               'override', CASE WHEN o.rule_id IS NOT NULL THEN jsonb_build_object(
                   'threshold', o.threshold, 'sustained_for', o.sustained_for::text,
                   'enabled', o.enabled, 'updated_at', o.updated_at) END),
           c.first_breach_at, c.last_breach_at, s.last_value, s.peak, greatest(s.breaches, 1),
           CASE WHEN c.over THEN now() END,
           CASE WHEN c.over THEN 'rpmstore' END,
           CASE WHEN c.over THEN 'auto' END
    FROM classified c
    JOIN rpm.alert_rules r ON r.rule_id = c.rule_id
    JOIN rpm.metrics m ON m.metric_id = r.metric_id
    LEFT JOIN rpm.alert_rule_overrides o ON o.rule_id = c.rule_id AND o.patient_id = c.patient_id
    CROSS JOIN LATERAL (
        SELECT count(*) AS breaches,
               CASE c.kind WHEN 'above' THEN max(x.value) ELSE min(x.value) END AS peak,
               (array_agg(x.value ORDER BY x.measured_at DESC))[1] AS last_value
        FROM rpm.readings x
        WHERE x.patient_id = c.patient_id AND x.metric_id = c.metric_id
          AND x.measured_at BETWEEN c.first_breach_at AND c.last_breach_at
          AND rpm.alert_breaches(c.kind, c.threshold, x.value)
    ) s
    ORDER BY c.first_breach_at
    ON CONFLICT (patient_id, rule_id) WHERE status <> 'resolved' DO NOTHING
    RETURNING alert_id, status
), events AS (
    INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status, note)
    SELECT alert_id, 'rpmstore', NULL, 'open', 'threshold breached' FROM inserted
    UNION ALL
    SELECT alert_id, 'rpmstore', 'open', 'resolved', 'back in range (late readings)'
    FROM inserted WHERE status = 'resolved'
)
SELECT alert_id, status FROM inserted;

-- name: resolve_missing_data_for_touched
-- Data arrived: missing-data alerts of the touched (patient, metric) resolve once a reading
-- newer than the one they were raised after is stored.
WITH touched AS (
    SELECT DISTINCT patient_id, metric_id
    FROM unnest($1::uuid[], $2::smallint[]) AS t(patient_id, metric_id)
), target AS (
    SELECT a.alert_id, a.status
    FROM touched t
    JOIN rpm.alert_rules r ON r.metric_id = t.metric_id AND r.kind = 'missing_data'
    JOIN rpm.alerts a
      ON a.patient_id = t.patient_id AND a.rule_id = r.rule_id AND a.status <> 'resolved'
    WHERE r.auto_resolve
      -- An ordered probe, not EXISTS (see resolve_back_in_range).
      AND (SELECT x.measured_at FROM rpm.readings x
           WHERE x.patient_id = t.patient_id AND x.metric_id = t.metric_id
             AND x.measured_at > (a.rule_snapshot ->> 'last_reading_at')::timestamptz
           ORDER BY x.measured_at LIMIT 1) IS NOT NULL
    FOR UPDATE OF a
), resolved AS (
    UPDATE rpm.alerts a
    SET status = 'resolved', resolved_at = now(), resolved_by = 'rpmstore', resolution = 'auto'
    FROM target t
    WHERE a.alert_id = t.alert_id AND a.status <> 'resolved'
    RETURNING a.alert_id, t.status AS from_status
), events AS (
    INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status, note)
    SELECT alert_id, 'rpmstore', from_status, 'resolved', 'readings resumed'
    FROM resolved
)
SELECT alert_id FROM resolved;

-- name: missing_data_candidates
-- (patient, rule) pairs whose data is missing at $1: the patient has a device assigned now,
-- has sent this metric before, and its newest reading of it (or the start of the current
-- assignments, if later) is older than missing_after. A metric a patient never sent is not
-- expected from them. Returns the patients to lock; missing_data_open re-checks under the lock.
WITH monitored AS (
    SELECT da.patient_id, min(lower(da.valid_during)) AS monitored_since
    FROM rpm.device_assignments da
    JOIN rpm.patients p ON p.patient_id = da.patient_id AND p.deleted_at IS NULL
    WHERE da.valid_during @> $1::timestamptz
    GROUP BY da.patient_id
), rules AS (
    SELECT mo.patient_id, mo.monitored_since, r.rule_id, r.metric_id,
           coalesce(o.missing_after, r.missing_after) AS missing_after
    FROM monitored mo
    CROSS JOIN rpm.alert_rules r
    LEFT JOIN rpm.alert_rule_overrides o ON o.rule_id = r.rule_id AND o.patient_id = mo.patient_id
    WHERE r.kind = 'missing_data' AND r.deleted_at IS NULL AND coalesce(o.enabled, r.enabled)
)
SELECT DISTINCT ru.patient_id
FROM rules ru
CROSS JOIN LATERAL (
    SELECT x.measured_at FROM rpm.readings x
    WHERE x.patient_id = ru.patient_id AND x.metric_id = ru.metric_id AND x.measured_at <= $1
    ORDER BY x.measured_at DESC LIMIT 1
) newest
WHERE greatest(newest.measured_at, ru.monitored_since) + ru.missing_after <= $1
  AND NOT EXISTS (SELECT 1 FROM rpm.alerts a
                  WHERE a.patient_id = ru.patient_id AND a.rule_id = ru.rule_id
                    AND a.status <> 'resolved');

-- name: missing_data_open
-- Under the patients' locks ($2): open one alert per (patient, rule) whose data is missing at
-- $1. first_breach_at is when the data became missing; the snapshot keeps the reading it is
-- missing after, which is what resolves it.
WITH monitored AS (
    SELECT da.patient_id, min(lower(da.valid_during)) AS monitored_since
    FROM rpm.device_assignments da
    WHERE da.valid_during @> $1::timestamptz AND da.patient_id = ANY ($2::uuid[])
    GROUP BY da.patient_id
), rules AS (
    SELECT mo.patient_id, mo.monitored_since, r.rule_id, r.metric_id, r.name, r.severity,
           r.auto_resolve, r.missing_after AS rule_missing_after, r.updated_at AS rule_updated_at,
           coalesce(o.missing_after, r.missing_after) AS missing_after,
           o.rule_id IS NOT NULL AS overridden, o.missing_after AS override_missing_after,
           o.enabled AS override_enabled, o.updated_at AS override_updated_at
    FROM monitored mo
    CROSS JOIN rpm.alert_rules r
    LEFT JOIN rpm.alert_rule_overrides o ON o.rule_id = r.rule_id AND o.patient_id = mo.patient_id
    WHERE r.kind = 'missing_data' AND r.deleted_at IS NULL AND coalesce(o.enabled, r.enabled)
), missing AS (
    SELECT ru.*, greatest(newest.measured_at, ru.monitored_since) AS last_reading_at
    FROM rules ru
    CROSS JOIN LATERAL (
        SELECT x.measured_at FROM rpm.readings x
        WHERE x.patient_id = ru.patient_id AND x.metric_id = ru.metric_id
          AND x.measured_at <= $1
        ORDER BY x.measured_at DESC LIMIT 1
    ) newest
    WHERE greatest(newest.measured_at, ru.monitored_since) + ru.missing_after <= $1
), inserted AS (
    INSERT INTO rpm.alerts (rule_id, patient_id, severity, rule_snapshot, first_breach_at,
                            last_breach_at)
    SELECT mi.rule_id, mi.patient_id, mi.severity,
           jsonb_build_object(
               'rule_id', mi.rule_id, 'name', mi.name, 'metric', m.code, 'kind', 'missing_data',
               'severity', mi.severity, 'missing_after', mi.missing_after::text,
               'auto_resolve', mi.auto_resolve,
               'rule_missing_after', mi.rule_missing_after::text,
               'rule_updated_at', mi.rule_updated_at,
               'last_reading_at', mi.last_reading_at,
               'override', CASE WHEN mi.overridden THEN jsonb_build_object(
                   'missing_after', mi.override_missing_after::text,
                   'enabled', mi.override_enabled,
                   'updated_at', mi.override_updated_at) END),
           mi.last_reading_at + mi.missing_after, mi.last_reading_at + mi.missing_after
    FROM missing mi
    JOIN rpm.metrics m ON m.metric_id = mi.metric_id
    ON CONFLICT (patient_id, rule_id) WHERE status <> 'resolved' DO NOTHING
    RETURNING alert_id
), events AS (
    INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status, note)
    SELECT alert_id, 'rpmstore', NULL, 'open', 'no data' FROM inserted
)
SELECT count(*) FROM inserted;

-- name: missing_data_resumed
-- Missing-data alerts whose patient has sent the metric again (in case the evaluation after
-- that reading did not run); patients to lock.
SELECT DISTINCT a.patient_id, r.metric_id
FROM rpm.alerts a
JOIN rpm.alert_rules r ON r.rule_id = a.rule_id
WHERE a.status <> 'resolved' AND r.kind = 'missing_data' AND r.auto_resolve
  -- An ordered probe, not EXISTS (see resolve_back_in_range).
  AND (SELECT x.measured_at FROM rpm.readings x
       WHERE x.patient_id = a.patient_id AND x.metric_id = r.metric_id
         AND x.measured_at > (a.rule_snapshot ->> 'last_reading_at')::timestamptz
       ORDER BY x.measured_at LIMIT 1) IS NOT NULL;

-- name: take_parked_evaluations
-- Claimed by one sweeper at a time (SKIP LOCKED); deleted in the transaction that evaluates them.
DELETE FROM rpm.alert_pending_evaluations
WHERE pending_id IN (
    SELECT pending_id FROM rpm.alert_pending_evaluations
    ORDER BY pending_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING patient_id, metric_id, range_start, range_end;

-- name: claim_outbox
-- The oldest committed ingest batches not claimed by another worker (SKIP LOCKED), deleted in
-- the transaction that evaluates them: if evaluation fails or the worker dies, the rollback
-- puts them back. One range per series over all claimed batches.
WITH claimed AS (
    DELETE FROM rpm.alert_outbox
    WHERE batch_id IN (
        SELECT batch_id FROM rpm.alert_outbox
        ORDER BY batch_id
        LIMIT $1
        FOR UPDATE SKIP LOCKED)
    RETURNING batch_id, patient_ids, metric_ids, range_starts, range_ends, lows, highs
)
SELECT s.patient_id, s.metric_id,
       'epoch'::timestamptz + min(s.start_us) * interval '1 microsecond' AS range_start,
       'epoch'::timestamptz + max(s.end_us) * interval '1 microsecond' AS range_end,
       min(s.low) AS low, max(s.high) AS high,
       array_agg(DISTINCT c.batch_id) AS batch_ids
FROM claimed c
CROSS JOIN LATERAL unnest(c.patient_ids, c.metric_ids, c.range_starts, c.range_ends, c.lows,
                          c.highs) AS s(patient_id, metric_id, start_us, end_us, low, high)
GROUP BY s.patient_id, s.metric_id;

-- name: park_outbox
-- Outbox batches whose evaluation keeps failing: moved to the parked evaluations (for the
-- sweep, with the error) so that they stop holding up the batches behind them.
WITH claimed AS (
    DELETE FROM rpm.alert_outbox
    WHERE batch_id = ANY ($1::bigint[])
    RETURNING patient_ids, metric_ids, range_starts, range_ends
)
INSERT INTO rpm.alert_pending_evaluations (patient_id, metric_id, range_start, range_end,
                                           last_error)
SELECT s.patient_id, s.metric_id,
       'epoch'::timestamptz + min(s.start_us) * interval '1 microsecond',
       'epoch'::timestamptz + max(s.end_us) * interval '1 microsecond',
       $2
FROM claimed c
CROSS JOIN LATERAL unnest(c.patient_ids, c.metric_ids, c.range_starts, c.range_ends)
    AS s(patient_id, metric_id, start_us, end_us)
GROUP BY s.patient_id, s.metric_id;

-- name: outbox_backlog
-- Batches waiting for alert evaluation, and how long the oldest has waited (seconds).
SELECT count(*), coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8
FROM rpm.alert_outbox;
