"""The MQTT ingestor: a shared subscription whose messages are acknowledged only after COMMIT.

- Topic ``rpm/v1/devices/{device_id}/readings``, QoS 1, subscribed as
  ``$share/<group>/rpm/v1/devices/+/readings`` so several ingestor processes split the load.
- Persistent session: MQTT 5 ``clean_start=False`` with a session expiry, and a stable client
  id, so messages that arrive while an ingestor is down wait for it at the broker. A reconnect
  that finds no session (``session_present`` false) is logged and counted.
- Manual acknowledgement (paho-mqtt 2.x): a PUBACK is sent once the message's readings (or
  its quarantine row) have committed, in the order the messages arrived, as MQTT requires.
  A message the process dies holding is redelivered and recognised as duplicates.
- Backpressure: the client announces a Receive Maximum, so the broker never has more than that
  many unacknowledged messages out to us; when the group committer's buffer is full, messages
  simply wait (unacknowledged) and the broker keeps the rest.

paho runs its network loop in its own thread; messages cross into asyncio through
``call_soon_threadsafe`` and acknowledgements go back through paho's thread-safe ``ack``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest.committer import BufferFullError, DatabaseUnavailableError
from ingest.runtime import IngestRuntime
from ingest.service import PayloadRejectedError
from ingest.transport import parse_broker_url
from schema.errors import ErrorKind, classify, sqlstate

log = logging.getLogger(__name__)

TOPIC_FILTER = "rpm/v1/devices/+/readings"
_TOPIC = re.compile(r"^rpm/v1/devices/([^/]+)/readings$")
_BUSY_RETRY_S = 0.2
_MAX_RETRY_S = 5.0
# A message whose ingest fails this many times for a reason other than the database is
# quarantined (reason INGEST_FAILED) and acknowledged.
_MAX_UNEXPECTED_FAILURES = 5
INGEST_FAILED = "ingest_failed"


def _waits_for_the_database(error: Exception) -> bool:
    """Whether a failure says nothing about the message: retried for as long as it lasts.

    Besides unavailability, that is the database refusing for a reason unrelated to the data
    (a missing privilege, a read-only standby): an operator fixes it, and quarantining valid
    readings meanwhile would be wrong. Data refusals are not waited for: the committer
    quarantines those itself, so one reaching here is a defect of this message's handling.
    """
    if isinstance(error, DatabaseUnavailableError):
        return True
    kind = classify(error)
    return kind is ErrorKind.TRANSIENT or (kind is ErrorKind.DEFECT and sqlstate(error) is not None)


def subscription_filter(group: str) -> str:
    """The ingestors' subscription: shared by ``group``, or plain when ``group`` is empty.

    Mosquitto 2.0 restores a persistent session's plain subscriptions after a restart but not
    its shared ones: until a shared-group ingestor has subscribed again, device messages are
    acknowledged to the devices and dropped (tests/faults). A single ingestor with an empty
    group has no such window, but cannot split the load with others.
    """
    return f"$share/{group}/{TOPIC_FILTER}" if group else TOPIC_FILTER


@dataclass(frozen=True)
class MqttOptions:
    url: str  # mqtts://user:password@host:port?cafile=... (ingest/transport.py)
    client_id: str  # stable across restarts: it names the persistent session
    group: str = "rpmstore-ingest"
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000
    # Messages decoded and validated at once. Bounding it keeps the group committer's buffer
    # from filling (a full buffer would make every waiting message decode again on retry).
    max_concurrent_messages: int = 64
    keepalive_s: int = 30
    # Plain mqtt:// to a host other than loopback (RPMSTORE_MQTT_ALLOW_PLAINTEXT).
    allow_plaintext: bool = False


class MqttRetireError(RuntimeError):
    """The session could not be retired safely; it was left in place."""


def shutdown_client(client: mqtt.Client) -> None:
    """Disconnect, stop the network thread and close every socket the client holds.

    paho keeps its internal wake-up socket pair open after ``loop_stop`` until the client is
    garbage-collected, which leaks two sockets per client in long-lived processes and tests.
    """
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()  # the only way paho offers to close the socket pair


def device_in_topic(topic: str) -> str | None:
    match = _TOPIC.match(topic)
    return match[1] if match else None


@dataclass
class _Delivery:
    mid: int
    generation: int  # which connection delivered it; acks never cross connections
    topic: str
    payload: bytes


class MqttIngestor:
    def __init__(self, runtime: IngestRuntime, options: MqttOptions) -> None:
        self._runtime = runtime
        self._options = options
        # Parsed here so that an insecure or malformed URL fails before anything starts.
        self._endpoint = parse_broker_url(options.url, allow_plaintext=options.allow_plaintext)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._generation = 0
        self._arrival: deque[_Delivery] = deque()  # current connection, in arrival order
        self._finished: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._ignored = 0  # messages that arrived after we stopped taking new ones
        self._drained = False
        self._connected = asyncio.Event()
        self._slots = asyncio.Semaphore(options.max_concurrent_messages)
        self._retiring = False
        self._retire_idle_s = 0.0
        self._unsubscribed = asyncio.Event()
        self._last_activity_at = 0.0
        self.messages_acked = 0
        self.subscribed = asyncio.Event()  # the broker confirmed the subscription (SUBACK)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight messages and disconnect."""
        await self._consume(stop, retire=False)

    async def retire(self, *, idle_s: float = 3.0) -> None:
        """Drain this client id's persistent session and end it, for an ingestor taken away.

        While an ingestor is down its session stays in the shared group, and Mosquitto keeps
        queueing that session's share of the readings for it (for the session's whole expiry).
        Retiring connects as that session, unsubscribes so nothing new is routed to it, stores
        and acknowledges everything it had queued, and ends the session once no message has
        come for ``idle_s`` seconds.
        """
        stop = asyncio.Event()
        self._retire_idle_s = idle_s
        await self._consume(stop, retire=True)

    async def _consume(self, stop: asyncio.Event, *, retire: bool) -> None:
        self._retiring = retire
        self._loop = asyncio.get_running_loop()
        client = self._make_client()
        self._client = client
        client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=self._options.keepalive_s,
            clean_start=False,
            properties=self._connect_properties(),
        )
        client.loop_start()
        try:
            if retire:
                await self._drain()
            else:
                await stop.wait()
        finally:
            self._accepting = False
            await self._finish_in_flight()
            if retire and self.session_ended:
                end = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call] # paho: untyped
                end.SessionExpiryInterval = 0  # the broker deletes the session on disconnect
                client.disconnect(properties=end)
            elif retire:
                log.error(
                    "MQTT session not ended: messages arrived while retiring; run --retire again"
                )
            shutdown_client(client)

    async def _finish_in_flight(self, grace_s: float = 30.0) -> None:
        """Let messages being stored finish and be acknowledged; past the grace period (a
        database outage) they are cancelled unacknowledged, and the broker redelivers them."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("stopped with %d MQTT messages unacknowledged", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    async def _drain(self) -> None:
        """Wait until the session holds nothing more: unsubscribed, nothing in flight, and
        neither a message nor an acknowledgement for ``retire_idle_s`` (the broker only sends
        more of a backlog as acknowledgements free its Receive Maximum window)."""
        try:
            await asyncio.wait_for(self._unsubscribed.wait(), 30)
        except TimeoutError as exc:
            raise MqttRetireError("the broker did not confirm the unsubscribe") from exc
        loop = asyncio.get_running_loop()
        while (
            self._tasks
            or self._arrival
            or loop.time() - self._last_activity_at < self._retire_idle_s
        ):
            await asyncio.sleep(0.1)
        self._drained = True
        log.info("MQTT session drained", extra={"acknowledged": self.messages_acked})

    @property
    def session_ended(self) -> bool:
        """After ``retire``: whether the broker was told to delete the session."""
        return self._drained and self._ignored == 0

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._options.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self._endpoint.apply(client)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call] # paho: untyped
        properties.SessionExpiryInterval = self._options.session_expiry_s
        properties.ReceiveMaximum = self._options.receive_maximum
        return properties

    # --- paho's thread -------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, code: ReasonCode, _props: Any
    ) -> None:
        if code.is_failure:
            log.error("MQTT connection refused: %s", code)
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connection_started, bool(flags.session_present))
        topic_filter = subscription_filter(self._options.group)
        if self._retiring:
            client.unsubscribe(topic_filter)
        else:
            client.subscribe(topic_filter, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.subscribed.set)

    def _on_unsubscribe(self, *_args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._unsubscribed.set)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, code: ReasonCode, _props: Any
    ) -> None:
        log.warning("MQTT disconnected: %s", code)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connection_lost)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(
            self._received, message.mid, message.topic, bytes(message.payload)
        )

    # --- the event loop --------------------------------------------------------------------
    def _connection_lost(self) -> None:
        # A new generation at once: a message of the lost connection that finishes now must
        # not be acknowledged on the next connection, where its packet id may mean another.
        self._generation += 1
        self._arrival.clear()
        self._finished.clear()

    def _connection_started(self, session_present: bool) -> None:
        if self._connected.is_set() and not session_present:
            self._runtime.metrics.mqtt_sessions_lost.inc()
            log.warning("MQTT session was not present on reconnect; broker had no queued state")
        self._generation += 1
        self._last_activity_at = asyncio.get_running_loop().time()
        self._arrival.clear()
        self._finished.clear()
        self._connected.set()
        log.info("MQTT connected", extra={"session_present": session_present})

    def _received(self, mid: int, topic: str, payload: bytes) -> None:
        if not self._accepting:
            self._ignored += 1
            return  # not acknowledged: the broker redelivers it to this session later
        self._last_activity_at = asyncio.get_running_loop().time()
        delivery = _Delivery(mid, self._generation, topic, payload)
        self._arrival.append(delivery)
        task = asyncio.create_task(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: _Delivery) -> None:
        async with self._slots:
            await self._store(delivery)
        self._finish(delivery)

    async def _store(self, delivery: _Delivery) -> None:
        """Store (or quarantine) one message, retrying until it is durable: never dropped."""
        claimed = device_in_topic(delivery.topic)
        try:
            device_id = uuid.UUID(claimed) if claimed else None
        except ValueError:
            device_id = None  # not a uuid: validation reports the device as unknown
        backoff = _BUSY_RETRY_S
        failures = 0
        while True:
            try:
                device = await self._runtime.devices.by_id(device_id) if device_id else None
                await self._runtime.service.ingest(
                    delivery.payload,
                    source="mqtt",
                    device=device,
                    claimed_device=claimed,
                    topic=delivery.topic,
                    require_device_id=True,  # cross-checked with the topic's device
                )
                break
            except PayloadRejectedError:
                break  # quarantined and committed: acknowledge it like any stored message
            except BufferFullError:
                await asyncio.sleep(_BUSY_RETRY_S)  # hold the ack: backpressure to the broker
            except Exception as exc:
                if _waits_for_the_database(exc):
                    # Never acknowledged, never dropped: retried until the database is back,
                    # and later messages wait behind it because acknowledgements go in order.
                    log.exception(
                        "MQTT message not stored yet; retrying", extra={"mid": delivery.mid}
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_RETRY_S)
                    continue
                # Not the database: something about this message breaks ingest (a defect).
                # Retried a few times, then quarantined whole with the error and acknowledged:
                # kept, never silently lost, and never a poison message that stalls every
                # acknowledgement behind it.
                failures += 1
                log.exception(
                    "MQTT message failed unexpectedly",
                    extra={"mid": delivery.mid, "attempt": failures},
                )
                if failures >= _MAX_UNEXPECTED_FAILURES and await self._quarantine_failed(
                    delivery, claimed, exc
                ):
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_RETRY_S)

    async def _quarantine_failed(
        self, delivery: _Delivery, claimed: str | None, error: Exception
    ) -> bool:
        """Quarantine a message that keeps failing; whether it is now durably kept."""
        try:
            await self._runtime.service.quarantine(
                delivery.payload,
                source="mqtt",
                reason=INGEST_FAILED,
                detail=f"ingest failed {_MAX_UNEXPECTED_FAILURES} times on this message: "
                f"{type(error).__name__}: {error}",
                claimed_device=claimed,
                topic=delivery.topic,
            )
        except Exception:
            log.exception("could not quarantine a failing MQTT message; retrying it")
            return False
        return True

    def _finish(self, delivery: _Delivery) -> None:
        if delivery.generation != self._generation or self._client is None:
            return  # that connection is gone; the broker redelivers, dedup recognises it
        self._finished.add(delivery.mid)
        while self._arrival and self._arrival[0].mid in self._finished:
            done = self._arrival.popleft()
            self._finished.discard(done.mid)
            self._client.ack(done.mid, 1)
            self.messages_acked += 1
            self._last_activity_at = asyncio.get_running_loop().time()
