"""Device ingest: decode, validate, group-commit with binary COPY, quarantine what is bad.

The public interface for other parts (the HTTP API, the jobs, the composition root) is what
this module exports. Alerting is its own part (``alerting/``); ingest only feeds it.
"""

from ingest.committer import BufferFullError, DatabaseUnavailableError
from ingest.payload import MAX_PAYLOAD_BYTES
from ingest.runtime import IngestLimits, IngestRuntime, open_ingest_runtime
from ingest.series import touched_ranges
from ingest.service import IngestReport, PayloadRejectedError, RejectedReading
from ingest.strict_json import DuplicateMemberError, json_type, loads_strict

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "BufferFullError",
    "DatabaseUnavailableError",
    "DuplicateMemberError",
    "IngestLimits",
    "IngestReport",
    "IngestRuntime",
    "PayloadRejectedError",
    "RejectedReading",
    "json_type",
    "loads_strict",
    "open_ingest_runtime",
    "touched_ranges",
]
