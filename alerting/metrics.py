"""Prometheus metrics of alert evaluation (registered on the process's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.evaluation_seconds = Histogram(
            "rpmstore_alert_evaluation_seconds",
            "Time of one alert evaluation transaction (all batches queued since the last).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.failures = Counter(
            "rpmstore_alert_evaluation_failures",
            "Failed alert evaluation attempts (retried, or parked after max attempts).",
            ["kind"],
            registry=registry,
        )
        self.parked = Counter(
            "rpmstore_alert_evaluations_parked",
            "Outbox batches whose evaluation kept failing (parked for the sweep).",
            registry=registry,
        )
        self.alerts = Counter(
            "rpmstore_alerts_changed",
            "Alerts opened, extended or auto-resolved by evaluation.",
            ["change"],
            registry=registry,
        )
        self.outbox_batches = Gauge(
            "rpmstore_alert_outbox_batches",
            "Committed ingest batches waiting in rpm.alert_outbox (checked about once a second).",
            registry=registry,
        )
        self.outbox_age_seconds = Gauge(
            "rpmstore_alert_outbox_oldest_seconds",
            "How long the oldest batch in rpm.alert_outbox has waited for evaluation.",
            registry=registry,
        )
