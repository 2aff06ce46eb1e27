"""How the simulated ward's payloads reach rpmstore: HTTP requests or MQTT messages.

Both senders take payloads one at a time (``submit``) without waiting for each to finish, and
``finish`` waits (bounded) until every one has been answered: by the API (HTTP) or by the
broker's PUBACK (MQTT). The pacing of ``submit`` calls is the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol

import httpx2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ingest.mqtt import shutdown_client
from ingest.transport import parse_broker_url
from rpmstore.simulate_ward import PlannedPayload

log = logging.getLogger(__name__)

_MAX_RETRY_AFTER_S: Final = 30.0
_MAX_ATTEMPTS: Final = 20  # per payload, over 503s and connection errors together
_CONNECT_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.05


class SendError(RuntimeError):
    """The sender could not reach its server at all (no broker connection, say)."""


@dataclass
class Delivery:
    """What the transport says about the payloads it was given."""

    payloads: int = 0  # submitted
    readings: int = 0  # submitted, in stored-row units
    delivered_payloads: int = 0  # answered by the API / acknowledged by the broker
    delivered_readings: int = 0  # so ingest must account for these
    undelivered_payloads: int = 0  # given up on, or still unacknowledged at the deadline
    # Readings sent again after an attempt whose fate is unknown (connection lost mid-request,
    # a 503 after the commit timeout): ingest may have stored them the first time, and then
    # counts the repeat as duplicates. An upper bound on such extra duplicates.
    uncertain_readings: int = 0
    transport: Counter[str] = field(default_factory=Counter)  # e.g. "HTTP 200", "PUBACK"
    # HTTP only: what the answers said (stored, duplicates, quarantined by reason).
    answered_stored: int = 0
    answered_duplicates: int = 0
    answered_quarantined: Counter[str] = field(default_factory=Counter)


class Sender(Protocol):
    delivery: Delivery

    async def submit(self, payload: PlannedPayload) -> None: ...

    async def finish(self, timeout: float) -> None: ...


class HttpSender:
    """``POST /v1/readings`` with each device's own token, at most ``concurrency`` at a time.

    A 503 (ingest buffer full, or the database slow or away) is retried after its Retry-After:
    nothing was stored for a busy answer, and a retry after a commit timeout is recognised as
    duplicates, so retrying never stores a reading twice.
    """

    def __init__(self, api_url: str, *, concurrency: int) -> None:
        self.delivery = Delivery()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        # trust_env off: a proxy from the environment has no business between a ward and its
        # API, and would distort what is measured.
        self._client = httpx2.AsyncClient(
            base_url=api_url,
            limits=httpx2.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            ),
            timeout=httpx2.Timeout(60.0),
            trust_env=False,
        )

    async def __aenter__(self) -> HttpSender:
        # Fail fast with a clear message rather than retrying every payload against nothing.
        try:
            response = await self._client.get("/readyz")
        except httpx2.TransportError as exc:
            await self._client.aclose()
            raise SendError(f"the API at {self._client.base_url} does not answer: {exc}") from exc
        if response.status_code != 200:
            await self._client.aclose()
            raise SendError(
                f"the API at {self._client.base_url} is not ready: "
                f"/readyz answered {response.status_code}"
            )
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def submit(self, payload: PlannedPayload) -> None:
        """Start sending ``payload``; waits only while ``concurrency`` requests are in flight."""
        await self._slots.acquire()
        self.delivery.payloads += 1
        self.delivery.readings += payload.readings
        task = asyncio.create_task(self._deliver(payload))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def finish(self, timeout: float) -> None:
        """Wait (bounded) for every answer; what is still unanswered then counts undelivered."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            self.delivery.undelivered_payloads += len(pending)
            log.error("%d payloads were not answered within %.0f s", len(pending), timeout)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _deliver(self, payload: PlannedPayload) -> None:
        headers = {
            "Authorization": f"Bearer {payload.device.token}",
            "Content-Type": "application/json",
        }
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                response = await self._client.post(
                    "/v1/readings", content=payload.body, headers=headers
                )
            except httpx2.TransportError as exc:
                self.delivery.transport["connection errors"] += 1
                self.delivery.uncertain_readings += payload.readings
                log.warning("POST /v1/readings failed (attempt %d): %s", attempt, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, _MAX_RETRY_AFTER_S))
                continue
            if response.status_code == 429:
                # Over the device's rate (api/edge.py): refused before anything ran, like busy.
                self.delivery.transport["HTTP 429 retried"] += 1
                await asyncio.sleep(_retry_after(response))
                continue
            if response.status_code == 503:
                self.delivery.transport["HTTP 503 retried"] += 1
                if _problem_reason(response) != "busy":  # busy: refused before anything ran
                    self.delivery.uncertain_readings += payload.readings
                await asyncio.sleep(_retry_after(response))
                continue
            self._record(payload, response)
            return
        self.delivery.undelivered_payloads += 1
        log.error("gave up on a payload after %d attempts", _MAX_ATTEMPTS)

    def _record(self, payload: PlannedPayload, response: httpx2.Response) -> None:
        delivery = self.delivery
        delivery.transport[f"HTTP {response.status_code}"] += 1
        body: Any = response.json()
        if response.status_code == 200:
            delivery.answered_stored += int(body["stored"])
            delivery.answered_duplicates += int(body["duplicates"])
            delivery.answered_quarantined.update(r["reason"] for r in body["rejected"])
        elif response.status_code in (400, 403, 413, 422):
            # The payload as a whole was refused, and quarantined with this reason.
            delivery.answered_quarantined[str(body["reason"])] += 1
        else:  # 401 and the like: nothing was recorded, so nothing to account for
            delivery.undelivered_payloads += 1
            log.error("payload refused: HTTP %d %s", response.status_code, body)
            return
        delivery.delivered_payloads += 1
        delivery.delivered_readings += payload.readings


def _problem_reason(response: httpx2.Response) -> str | None:
    """The ``reason`` of an rpmstore problem answer, if the body is one."""
    try:
        body: Any = response.json()
    except ValueError:
        return None
    return str(body.get("reason")) if isinstance(body, dict) else None


def _retry_after(response: httpx2.Response) -> float:
    """Seconds to wait as the 503 asks (RFC 9110 delay-seconds); 1 s when it does not say."""
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.0), _MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP-date: not what rpmstore sends; do not try to parse it
        return 1.0


class MqttSender:
    """Publishes QoS 1 to ``rpm/v1/devices/{device_id}/readings`` as one account (the gateway).

    A broker PUBACK means the broker has the message; whether ingest has stored it yet is for
    the caller to find out from the database. Acknowledgements are counted through paho's
    per-message info objects, because message ids wrap around at 65,535.
    """

    def __init__(
        self, url: str, *, max_inflight: int = 1000, allow_plaintext: bool = False
    ) -> None:
        self.delivery = Delivery()
        endpoint = parse_broker_url(url, allow_plaintext=allow_plaintext)
        self._address = (endpoint.host, endpoint.port)
        self._connected = threading.Event()
        self._refusal: str | None = None  # the broker's reason when it refused the connection
        self._reconnects = 0
        self._lock = threading.Lock()
        self._refused: set[int] = set()  # message ids the broker acknowledged with a failure
        self._pending: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rpmstore-simulator-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        endpoint.apply(self._client)  # TLS verified against the URL's CA, and credentials
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)  # 0: unbounded; pacing is the caller's
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish

    async def __aenter__(self) -> MqttSender:
        self._client.connect_async(*self._address)
        self._client.loop_start()
        answered = await asyncio.to_thread(self._connected.wait, _CONNECT_TIMEOUT_S)
        if not answered or self._refusal is not None:
            shutdown_client(self._client)
            where = f"the MQTT broker at {self._address[0]}:{self._address[1]}"
            raise SendError(
                f"{where} refused the connection: {self._refusal}"
                if answered
                else f"could not connect to {where} within {_CONNECT_TIMEOUT_S:.0f} s"
            )
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        shutdown_client(self._client)

    # paho's network thread
    def _on_connect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, code: ReasonCode, _props: Any
    ) -> None:
        if code.is_failure:
            self._refusal = str(code)
        elif self._connected.is_set():
            # paho re-sends unacknowledged messages after a reconnect; should the broker have
            # had one already, ingest sees it twice (as a duplicate). Shown in the report.
            with self._lock:
                self._reconnects += 1
        self._connected.set()  # either way: the waiting side reads _refusal

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, code: ReasonCode, _props: Any
    ) -> None:
        # Called before paho marks the message published, so _collect sees the refusal first.
        if code.is_failure:
            with self._lock:
                self._refused.add(mid)
            log.error("broker refused message %d: %s", mid, code)

    # the event loop
    async def submit(self, payload: PlannedPayload) -> None:
        info = self._client.publish(payload.device.topic, payload.body, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: queued by paho and sent on reconnect; anything else is a real failure.
            raise SendError(f"publish failed: {mqtt.error_string(info.rc)}")
        self.delivery.payloads += 1
        self.delivery.readings += payload.readings
        self._pending.append((info, payload.readings))

    async def finish(self, timeout: float) -> None:
        """Wait until the broker acknowledged every message, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self._collect()
            await asyncio.sleep(_POLL_S)
        self._collect()
        if self._pending:
            self.delivery.transport["no PUBACK"] = len(self._pending)
            self.delivery.undelivered_payloads += len(self._pending)
        with self._lock:
            if self._reconnects:
                self.delivery.transport["reconnects"] = self._reconnects

    def _collect(self) -> None:
        still: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        delivery = self.delivery
        for info, readings in self._pending:
            if not info.is_published():
                still.append((info, readings))
                continue
            with self._lock:
                refused = info.mid in self._refused
                self._refused.discard(info.mid)
            if refused:  # acknowledged with a failure code: the broker did not take it
                delivery.transport["PUBACK refused"] += 1
                delivery.undelivered_payloads += 1
            else:
                delivery.transport["PUBACK"] += 1
                delivery.delivered_payloads += 1
                delivery.delivered_readings += readings
        self._pending = still
