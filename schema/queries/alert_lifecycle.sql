-- Alert lifecycle for people (psycopg placeholders): open -> acknowledged -> resolved, or
-- open -> resolved. Each block changes the alert only if the transition is legal, records the
-- transition in rpm.alert_events in the same statement, and returns the changed alert, or no
-- row when the alert does not exist (or is invisible to the caller) or the transition is not
-- legal; alert_status tells those apart. The caller's transaction holds the audit record.
-- FOR UPDATE orders each transition with the evaluator's automatic ones on the same row, and
-- returns the newest status after waiting, so the event records the status really left.

-- name: alert_status
SELECT status
FROM rpm.alerts
WHERE alert_id = %(alert_id)s;

-- name: ack_alert
WITH target AS (
    SELECT alert_id, status
    FROM rpm.alerts
    WHERE alert_id = %(alert_id)s AND status = 'open'
    FOR UPDATE
), acknowledged AS (
    UPDATE rpm.alerts a
    SET status = 'acknowledged', acknowledged_at = now(), acknowledged_by = %(actor)s,
        ack_note = %(note)s
    FROM target t
    WHERE a.alert_id = t.alert_id
    RETURNING a.*, t.status AS from_status
), event AS (
    INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status, note)
    SELECT alert_id, %(actor)s, from_status, 'acknowledged', %(note)s
    FROM acknowledged
)
SELECT alert_id, rule_id, patient_id, status, severity, rule_snapshot, first_breach_at,
       last_breach_at, last_value, peak_value, breach_count, acknowledged_at, acknowledged_by,
       ack_note, resolved_at, resolved_by, resolution, created_at, updated_at, from_status
FROM acknowledged;

-- name: resolve_alert
WITH target AS (
    SELECT alert_id, status
    FROM rpm.alerts
    WHERE alert_id = %(alert_id)s AND status IN ('open', 'acknowledged')
    FOR UPDATE
), resolved AS (
    UPDATE rpm.alerts a
    SET status = 'resolved', resolved_at = now(), resolved_by = %(actor)s, resolution = 'manual'
    FROM target t
    WHERE a.alert_id = t.alert_id
    RETURNING a.*, t.status AS from_status
), event AS (
    INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status, note)
    SELECT alert_id, %(actor)s, from_status, 'resolved', %(note)s
    FROM resolved
)
SELECT alert_id, rule_id, patient_id, status, severity, rule_snapshot, first_breach_at,
       last_breach_at, last_value, peak_value, breach_count, acknowledged_at, acknowledged_by,
       ack_note, resolved_at, resolved_by, resolution, created_at, updated_at, from_status
FROM resolved;

-- name: alert_events
SELECT event_id, occurred_at, actor, from_status, to_status, note
FROM rpm.alert_events
WHERE alert_id = %(alert_id)s
ORDER BY event_id;
