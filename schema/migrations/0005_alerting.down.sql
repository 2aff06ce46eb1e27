-- Alerts fired by the default rules reference them; they go with the rules.
DELETE FROM rpm.alert_events
WHERE alert_id IN (SELECT alert_id FROM rpm.alerts
                   WHERE rule_id::text LIKE 'a1e7a000-0000-4000-8000-%');
DELETE FROM rpm.alerts WHERE rule_id::text LIKE 'a1e7a000-0000-4000-8000-%';
DELETE FROM rpm.alert_rule_overrides WHERE rule_id::text LIKE 'a1e7a000-0000-4000-8000-%';
DELETE FROM rpm.alert_rules WHERE rule_id::text LIKE 'a1e7a000-0000-4000-8000-%';
DROP FUNCTION rpm.alert_lock_bucket(uuid);
DROP FUNCTION rpm.alert_breaches(text, double precision, double precision);
DROP INDEX rpm.alert_rules_by_metric;
DROP TABLE rpm.alert_pending_evaluations;
ALTER TABLE rpm.alerts DROP COLUMN peak_value;
