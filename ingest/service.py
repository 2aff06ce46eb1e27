"""One entry point for every transport: raw payload in, durable outcome out.

HTTP and MQTT both call :meth:`IngestService.ingest`: decode, validate against the cached
catalogue and device, then hand the request to the group committer and wait for COMMIT.
Every reading received ends as stored, a recognised duplicate, or quarantined (with the raw
payload and a specific reason), and the metrics count which (the committer counts, when the
outcome is known).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ingest.catalogue import Catalogue
from ingest.committer import GroupCommitter, IngestOutcome, IngestRequest, QuarantineEntry
from ingest.devices import DeviceContext
from ingest.horizon import RetentionHorizon
from ingest.metrics import IngestMetrics
from ingest.payload import PayloadError, decode_payload
from ingest.store import Source
from ingest.validation import Rejection, validate_readings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectedReading:
    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class IngestReport:
    """The answer for one payload: what was stored and what was rejected, per reading."""

    batch_id: int
    stored: int
    duplicates: int
    rejected: tuple[RejectedReading, ...]


class PayloadRejectedError(Exception):
    """The payload as a whole was unusable; it has been quarantined with this reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class IngestService:
    def __init__(
        self,
        *,
        committer: GroupCommitter,
        catalogue: Catalogue,
        metrics: IngestMetrics,
        max_future: timedelta = timedelta(minutes=5),
        horizon: RetentionHorizon | None = None,
    ) -> None:
        self._horizon = horizon
        self._committer = committer
        self._catalogue = catalogue
        self._metrics = metrics
        self._max_future = max_future

    async def ingest(
        self,
        raw: bytes,
        *,
        source: Source,
        device: DeviceContext | None,
        claimed_device: str | None,
        topic: str | None = None,
        require_device_id: bool = False,
    ) -> IngestReport:
        """Store what is valid in ``raw`` and quarantine the rest; return after COMMIT.

        ``device`` is the authenticated (HTTP token) or addressed (MQTT topic) device, None when
        unknown; a payload naming a different device is refused whole.
        """
        received = time.time()
        received_at = datetime.fromtimestamp(received, UTC)
        base = IngestRequest(
            readings=(),
            reading_indexes=(),
            quarantine=(),
            raw_payload=raw,
            received_at=received,
            claimed_device=claimed_device,
            topic=topic,
            source=source,
        )
        try:
            payload = decode_payload(raw, require_device_id=require_device_id)
        except PayloadError as exc:
            await self._quarantine_whole(base, source, exc.reason, exc.detail)
            raise PayloadRejectedError(exc.reason, exc.detail) from exc
        if (
            payload.device_id is not None
            and device is not None
            and payload.device_id != device.device_id
        ):
            detail = (
                f"payload names device {payload.device_id} but was sent "
                f"{'to the topic' if topic else 'with the token'} of device {device.device_id}"
            )
            await self._quarantine_whole(base, source, "device_mismatch", detail)
            raise PayloadRejectedError("device_mismatch", detail)

        result = validate_readings(
            payload,
            device=device,
            catalogue=self._catalogue,
            received_at=received_at,
            max_future=self._max_future,
            oldest_allowed=self._horizon.value if self._horizon else None,
        )
        request = IngestRequest(
            readings=result.columns,
            reading_indexes=result.indexes,
            quarantine=[_entry(r) for r in result.rejected],
            raw_payload=raw,
            received_at=received,
            claimed_device=claimed_device,
            topic=topic,
            source=source,
        )
        outcome = await self._committer.submit(request)
        self._log(outcome, result.rejected, source)
        rejected = [RejectedReading(r.index, r.reason, r.detail) for r in result.rejected]
        rejected += [
            RejectedReading(c.reading_index, "conflict", c.detail) for c in outcome.conflicts
        ]
        rejected += [
            RejectedReading(e.reading_index, e.reason, e.detail)
            for e in outcome.refused
            if e.reading_index is not None
        ]
        return IngestReport(
            batch_id=outcome.batch_id,
            stored=outcome.stored,
            duplicates=outcome.duplicates,
            rejected=tuple(sorted(rejected, key=lambda r: r.index)),
        )

    async def _quarantine_whole(
        self, base: IngestRequest, source: Source, reason: str, detail: str
    ) -> None:
        log.warning("payload quarantined: %s", reason, extra={"source": source, "detail": detail})
        # Counted by the committer once committed (ingest.committer.count_outcome).
        await self._committer.submit(
            replace(base, quarantine=(QuarantineEntry(reason, detail, None),), source=source)
        )

    async def quarantine(
        self,
        raw: bytes,
        *,
        source: Source,
        reason: str,
        detail: str,
        claimed_device: str | None = None,
        topic: str | None = None,
    ) -> None:
        """Quarantine ``raw`` whole with a caller's ``reason``; return after COMMIT.

        For transports that refuse something before it reaches decoding (the FHIR import: an
        unknown or ambiguous patient identifier) or that give up on it (an MQTT message that
        keeps failing), so that it is kept and counted like any other rejected payload.
        ``reason`` must be snake_case (the quarantine's CHECK).
        """
        base = IngestRequest(
            readings=(),
            reading_indexes=(),
            quarantine=(),
            raw_payload=raw,
            received_at=time.time(),
            claimed_device=claimed_device,
            topic=topic,
        )
        await self._quarantine_whole(base, source, reason, detail)

    @staticmethod
    def _log(outcome: IngestOutcome, rejected: list[Rejection], source: Source) -> None:
        # The metrics are counted by the committer, when the outcome is known.
        for conflict in outcome.conflicts:
            log.warning("conflicting reading quarantined", extra={"index": conflict.reading_index})
        if rejected:
            log.warning(
                "readings quarantined",
                extra={"source": source, "reasons": sorted({r.reason for r in rejected})},
            )


def _entry(rejection: Rejection) -> QuarantineEntry:
    return QuarantineEntry(rejection.reason, rejection.detail, rejection.index)
