"""Device ingest: decode, validate, group-commit with binary COPY, quarantine what is bad.

The public interface for other parts (the HTTP API, the CLI) is what this module exports.
"""

from ingest.alerting import (
    AlertNotFoundError,
    IllegalAlertTransitionError,
    acknowledge_alert,
    resolve_alert,
    sweep_missing_data,
)
from ingest.alerting.worker import AlertingOptions
from ingest.committer import BufferFullError, DatabaseUnavailableError
from ingest.payload import MAX_PAYLOAD_BYTES
from ingest.runtime import IngestLimits, IngestRuntime, open_ingest_runtime
from ingest.service import IngestReport, PayloadRejectedError, RejectedReading

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "AlertNotFoundError",
    "AlertingOptions",
    "BufferFullError",
    "DatabaseUnavailableError",
    "IllegalAlertTransitionError",
    "IngestLimits",
    "IngestReport",
    "IngestRuntime",
    "PayloadRejectedError",
    "RejectedReading",
    "acknowledge_alert",
    "open_ingest_runtime",
    "resolve_alert",
    "sweep_missing_data",
]
