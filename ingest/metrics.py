"""Prometheus metrics of ingest: what happened to every reading received, batches, buffer."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    """Built by the entry point with its own registry (nothing registers at import time)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.readings = Counter(
            "rpmstore_ingest_readings",
            "Readings received, by outcome (stored, duplicate, quarantined) and reason (a "
            "duplicate with a reason: a rejected reading already quarantined, from a retry).",
            ["source", "outcome", "reason"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "rpmstore_ingest_batch_rows",
            "Readings per committed ingest batch.",
            buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000),
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "rpmstore_ingest_commit_seconds",
            "Time from a batch's first statement to its COMMIT returning.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.buffer_rows = Gauge(
            "rpmstore_ingest_buffer_rows",
            "Readings waiting to be committed (stored or quarantined ones alike).",
            registry=registry,
        )
        self.buffer_full = Counter(
            "rpmstore_ingest_buffer_full",
            "Requests refused (HTTP 503) or held unacknowledged (MQTT): the buffer was full.",
            ["source"],
            registry=registry,
        )
        self.mqtt_sessions_lost = Counter(
            "rpmstore_mqtt_sessions_lost",
            "Reconnects where the broker had no persistent session (session_present false).",
            registry=registry,
        )
