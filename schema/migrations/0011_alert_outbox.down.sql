DROP TABLE rpm.alert_outbox;
