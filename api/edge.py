"""Limits at the HTTP edge, before a request costs the database anything.

- Body timeout: the whole request body must arrive within ``body_timeout_s`` of its headers;
  otherwise 408 and the connection is closed. A client that hangs up mid-body is counted and
  logged at INFO, never as a server error with a traceback.
- Content type: a request body to this API is JSON. A body declared as anything else
  (``text/plain``, a form, ...) is refused with 415 before any route runs. A body without a
  ``Content-Type`` is still read as JSON: many device HTTP stacks send none, and a browser's
  cross-site request without one cannot carry the ``Authorization`` header every route needs.
- Failed authentication: every 401 costs the client address one token of a bucket
  (``auth_failure_burst``, refilled at ``auth_failure_rate_per_s``); an address with an empty
  bucket gets 429 before its token is even looked up. Health and metrics stay reachable.
- Per device: ``POST /v1/readings`` takes one token of the device's bucket (``device_burst``,
  refilled at ``device_rate_per_s``) once its token is known; an empty bucket is 429.

Buckets live in this process's memory: with N server processes a client gets up to N times
the budget, which is fine for what they are for (one device or address must not monopolise
a process). Every refusal is counted in ``rpmstore_http_refused_total``, every answer in
``rpmstore_http_responses_total``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

RefusalReason = Literal[
    "body_timeout",
    "client_disconnected",
    "unsupported_media_type",
    "auth_rate_limited",
    "device_rate_limited",
]
# Paths a blocked address still reaches: probes and scrapes must not be blinded by a
# neighbour behind the same address. None of them takes a token.
_ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# nginx's code for "client closed request": what the responses counter shows for those.
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class EdgeLimits:
    """The limits (settings ``RPMSTORE_HTTP_*``; docs/operations/edge-limits.md).

    A rate of 0 turns that limit off.
    """

    body_timeout_s: float = 30.0
    device_rate_per_s: float = 10.0
    device_burst: int = 50
    auth_failure_rate_per_s: float = 1.0
    auth_failure_burst: int = 50


class TokenBuckets(Generic[K]):
    """Token buckets by key: ``rate`` tokens a second, at most ``burst`` saved up.

    At most ``max_keys`` buckets are kept; past that the least recently used is forgotten
    (a forgotten bucket is a full one), so memory stays bounded whatever the keys an attacker
    makes up.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0, burst and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        # key -> (tokens at `at`, at)
        self._buckets: OrderedDict[K, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _tokens(self, key: K, now: float) -> float:
        saved = self._buckets.get(key)
        if saved is None:
            return float(self.burst)
        tokens, at = saved
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def wait(self, key: K) -> float:
        """Seconds until ``key`` has a whole token (0: it has one now). Takes nothing."""
        if not self.enabled:
            return 0.0
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: K) -> float:
        """Take a token: 0.0 when taken, else the seconds until one will be there."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        self._store(key, tokens - 1, now)
        return 0.0

    def charge(self, key: K) -> None:
        """Take a token whether or not there is one (never below zero): a cost already paid."""
        if self.enabled:
            now = self._clock()
            self._store(key, max(0.0, self._tokens(key, now) - 1), now)

    def _store(self, key: K, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = Counter(
            "rpmstore_http_responses",
            "HTTP answers by route template (unmatched: no route) and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.refused = Counter(
            "rpmstore_http_refused",
            "Requests refused or abandoned at the edge, by reason.",
            ["reason"],
            registry=registry,
        )


class EdgeRefusal(HTTPException):
    """Raised from inside a request (body reading, the ingest route): answered by
    ``_refusal_answer`` as ``{"reason", "detail"}``. An HTTPException so that FastAPI's own
    body parsing passes it on instead of turning it into a 400."""

    def __init__(
        self,
        status_code: int,
        reason: RefusalReason,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.reason = reason


class EdgeGuard:
    """The limits of one app: its buckets and counters (``app.state.edge``)."""

    def __init__(self, limits: EdgeLimits, registry: CollectorRegistry) -> None:
        self.limits = limits
        self.metrics = EdgeMetrics(registry)
        self.devices: TokenBuckets[uuid.UUID] = TokenBuckets(
            limits.device_rate_per_s, limits.device_burst
        )
        self.auth_failures: TokenBuckets[str] = TokenBuckets(
            limits.auth_failure_rate_per_s, limits.auth_failure_burst
        )
        # One log line a minute per (reason, client): a bucket of one token, refilled slowly.
        self._logged: TokenBuckets[tuple[str, str]] = TokenBuckets(1 / 60, 1, max_keys=10_000)

    def refuse(self, reason: RefusalReason, key: str, **context: object) -> None:
        """Count every refusal; log it at WARNING once a minute per reason and client (a
        flood of refusals must not become a flood of log lines)."""
        self.metrics.refused.labels(reason).inc()
        if self._logged.take((reason, key)) == 0:
            log.warning(
                "refused at the edge: %s",
                reason,
                extra={"reason": reason, "client": key, **context},
            )

    def admit_device(self, device_id: uuid.UUID) -> None:
        """Take a token of the device's bucket or raise ``EdgeRefusal`` (429)."""
        wait = self.devices.take(device_id)
        if wait > 0:
            self.refuse("device_rate_limited", str(device_id))
            raise EdgeRefusal(
                429,
                "device_rate_limited",
                f"more than {self.limits.device_rate_per_s:g} requests a second from this "
                f"device (bursts up to {self.limits.device_burst}); nothing was stored, retry "
                "after the Retry-After seconds",
                {"Retry-After": _retry_after(wait)},
            )


def client_key(scope: Scope) -> str:
    """The client address the failed-auth budget is kept for. IPv6 clients are counted by
    their /64 (one subscriber's prefix: an attacker has 2**64 addresses in it)."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a unix socket, a test client)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _retry_after(wait_s: float) -> str:
    # RFC 9110 delay-seconds: a whole number, rounded up so that the retry finds a token.
    return str(max(1, math.ceil(wait_s)))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (``application/fhir+json``), any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _problem(
    status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None
) -> Any:
    return JSONResponse({"reason": reason, "detail": detail}, status, headers=headers)


class EdgeMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it must see each ``receive`` of the body)."""

    def __init__(self, app: ASGIApp, guard: EdgeGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        exchange = _Exchange(scope, guard, receive, send)
        # Without an answer: 500 when the app raised (the server error handler outside this
        # middleware answers), else the client went away first.
        unanswered = CLIENT_CLOSED_REQUEST
        try:
            refusal = self._refuse_early(scope, exchange.address)
            if refusal is not None:
                await refusal(scope, receive, exchange.send)
            else:
                await self.app(scope, exchange.receive, exchange.send)
        except BaseException:
            unanswered = 500
            raise
        finally:
            status = exchange.status or unanswered
            route = getattr(scope.get("route"), "path", "unmatched")
            guard.metrics.responses.labels(route, str(status)).inc()
            if status == 401:
                # Charged after the fact: this answer was given, the budget limits how many
                # more this address gets.
                guard.auth_failures.charge(exchange.address)

    def _refuse_early(self, scope: Scope, address: str) -> Any | None:
        guard = self.guard
        if scope["path"] not in _ALWAYS_OPEN and (wait := guard.auth_failures.wait(address)) > 0:
            guard.refuse("auth_rate_limited", address)
            return _problem(
                429,
                "auth_rate_limited",
                "too many failed authentications from this address; retry after the "
                "Retry-After seconds",
                {"Retry-After": _retry_after(wait)},
            )
        if scope["method"] in _BODY_METHODS and _has_body(scope):
            content_type = _header(scope, b"content-type")
            if content_type is not None and not is_json_media_type(content_type):
                guard.refuse("unsupported_media_type", address, path=scope["path"])
                return _problem(
                    415,
                    "unsupported_media_type",
                    f"the body must be JSON (Content-Type: application/json), not {content_type}",
                )
        return None


class _Exchange:
    """One request's ``receive`` with a deadline for the body, and its ``send``, which notes
    the status and closes the connection after an answer given before the whole body came."""

    def __init__(self, scope: Scope, guard: EdgeGuard, receive: Receive, send: Send) -> None:
        self._scope = scope
        self._guard = guard
        self._receive = receive
        self._send = send
        self.address = client_key(scope)
        self.status: int | None = None
        self.body_complete = not _has_body(scope)
        self._timeout_s = guard.limits.body_timeout_s
        # Counted from the headers: a body trickled in a byte at a time gets no more time.
        self._deadline = asyncio.get_running_loop().time() + self._timeout_s

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            if not self.body_complete:
                # Unread body bytes would hold the connection (the server waits for them
                # before the next request): answered early, it is closed instead.
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await self._send(message)

    async def receive(self) -> Message:
        if self.body_complete:
            # Past the body, receive only waits for a disconnect (streaming answers listen
            # for it): no deadline there.
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            self._guard.refuse("body_timeout", self.address, path=self._scope["path"])
            raise EdgeRefusal(
                408,
                "body_timeout",
                f"the request body did not arrive within {self._timeout_s:g} s",
            ) from None
        if message["type"] == "http.request":
            self.body_complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            # The client hung up before sending its whole body: nothing to answer and nobody
            # to answer it to; not a server error.
            self._guard.metrics.refused.labels("client_disconnected").inc()
            log.info(
                "client disconnected before sending the whole body",
                extra={"client": self.address, "path": self._scope["path"]},
            )
            raise EdgeRefusal(
                CLIENT_CLOSED_REQUEST, "client_disconnected", "the client disconnected"
            )
        return message


async def _refusal_answer(_request: Request, exc: Exception) -> Any:
    refusal = cast(EdgeRefusal, exc)
    return _problem(refusal.status_code, refusal.reason, refusal.detail, refusal.headers)


async def _guard(request: Request) -> EdgeGuard:
    return cast(EdgeGuard, request.app.state.edge)


EdgeDep = Annotated[EdgeGuard, Depends(_guard)]


def install_edge(app: FastAPI, limits: EdgeLimits, registry: CollectorRegistry) -> EdgeGuard:
    """Put the limits in front of ``app``; the guard is also ``app.state.edge`` (routes take
    per-device tokens from it)."""
    guard = EdgeGuard(limits, registry)
    app.state.edge = guard
    app.add_middleware(EdgeMiddleware, guard=guard)
    app.add_exception_handler(EdgeRefusal, _refusal_answer)
    return guard
