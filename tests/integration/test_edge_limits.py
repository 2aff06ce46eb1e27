"""Limits at the HTTP edge against a real uvicorn server and raw sockets: slow and abandoned
bodies, non-JSON bodies, a device over its rate, an address that keeps failing to
authenticate. Each outcome is checked in the answer and in /metrics."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx2
import psycopg
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from api.edge import EdgeLimits
from schema.registry import assign_device, register_device, register_patient
from tests.apphelpers import bearer, make_app
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # a real uvicorn server driven over raw sockets

# Bounds of the test, not assertions about speed: long enough never to be hit by a server
# that answers at all.
_WAIT_S = 60.0


@dataclass(frozen=True)
class Device:
    device_id: uuid.UUID
    token: str


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    devices: tuple[Device, Device]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when the series does not exist yet)."""
        text = httpx2.get(f"{self.base}/metrics", timeout=_WAIT_S).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def wait_for_metric(self, name: str, at_least: float, **labels: str) -> float:
        deadline = time.monotonic() + _WAIT_S
        while (value := self.metric(name, **labels)) < at_least:
            assert time.monotonic() < deadline, f"{name}{labels} stayed at {value}"
            time.sleep(0.05)
        return value


def _devices(conn: psycopg.Connection) -> tuple[Device, Device]:
    patient = register_patient(conn)
    found = []
    for serial in ("EDGE-1", "EDGE-2"):
        device = register_device(
            conn, kind="pulse_oximeter", manufacturer="Acme", model="OX", serial_number=serial
        )
        assign_device(
            conn,
            device_id=device.device_id,
            patient_id=patient,
            valid_from=datetime.now(UTC) - timedelta(days=1),
        )
        found.append(Device(device.device_id, device.token))
    return found[0], found[1]


@pytest.fixture
def serve(db_url: str, api_db_url: str, conn: psycopg.Connection) -> Iterator[object]:
    """``serve(limits)``: the app in a real uvicorn server (a thread of this process, so that
    its log records reach caplog), stopped at the end of the test."""
    devices = _devices(conn)
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(limits: EdgeLimits) -> Server:
        port = free_port()
        config = uvicorn.Config(
            make_app(db_url, api_db_url, edge_limits=limits),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        deadline = time.monotonic() + _WAIT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return Server(f"http://127.0.0.1:{port}", port, devices)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(_WAIT_S)


def _reading_body() -> bytes:
    now = int(time.time() * 1000)
    return b'{"readings": [{"metric": "spo2", "value": 97, "unit": "%%", "time": %d}]}' % now


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=_WAIT_S)
    sock.sendall(head.encode())
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_held_open_is_answered_408_and_the_connection_closed(
    serve: object, caplog: pytest.LogCaptureFixture
) -> None:
    assert callable(serve)
    server: Server = serve(EdgeLimits(body_timeout_s=1.0))
    token = server.devices[0].token
    sock = _raw_request(
        server.port,
        "POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n",
    )
    with sock:
        sock.sendall(b'{"readings"')  # 11 of 1000 bytes, then nothing
        answer = _read_answer(sock)  # returns only once the server closes
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"reason":"body_timeout"' in answer
    assert server.metric("rpmstore_http_refused_total", reason="body_timeout") == 1
    assert server.metric("rpmstore_http_responses_total", route="/v1/readings", status="408") == 1
    # The same for a JSON route whose body FastAPI parses itself (not a 400 "parse error").
    admin = bearer("admin-1", ["admin"])["Authorization"]
    sock = _raw_request(
        server.port,
        "POST /v1/admin/care-teams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {admin}\r\nContent-Length: 500\r\n\r\n",
    )
    with sock:
        sock.sendall(b'{"name": ')
        assert _read_answer(sock).startswith(b"HTTP/1.1 408 ")
    # Answered before its body was read (no token): the unread rest must not hold the
    # connection open either.
    sock = _raw_request(
        server.port, "POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    )
    with sock:
        sock.sendall(b"0123456789")
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_client_hanging_up_mid_body_is_counted_not_logged_as_an_error(
    serve: object, caplog: pytest.LogCaptureFixture
) -> None:
    assert callable(serve)
    server: Server = serve(EdgeLimits())
    sock = _raw_request(
        server.port,
        "POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {server.devices[0].token}\r\nContent-Length: 1000\r\n\r\n",
    )
    sock.sendall(b"0123456789")
    time.sleep(0.2)  # not a timing assertion: lets the route start reading before the hang-up
    sock.close()
    server.wait_for_metric("rpmstore_http_refused_total", 1, reason="client_disconnected")
    server.wait_for_metric("rpmstore_http_responses_total", 1, route="/v1/readings", status="499")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def test_a_body_that_is_not_json_is_refused_with_415(serve: object) -> None:
    assert callable(serve)
    server: Server = serve(EdgeLimits())
    device = server.devices[0]
    headers = {"Authorization": f"Bearer {device.token}"}
    with httpx2.Client(base_url=server.base, timeout=_WAIT_S) as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            refused = client.post(
                "/v1/readings",
                content=_reading_body(),
                headers={**headers, "Content-Type": content_type},
            )
            assert refused.status_code == 415, refused.text
            assert refused.json()["reason"] == "unsupported_media_type"
        admin = client.post(
            "/v1/admin/care-teams",
            content=b'{"name": "t"}',
            headers={**bearer("admin-1", ["admin"]), "Content-Type": "text/plain"},
        )
        assert admin.status_code == 415
        # JSON with parameters is JSON; no Content-Type at all is read as JSON (devices).
        for extra in ({"Content-Type": "application/json; charset=utf-8"}, {}):
            stored = client.post("/v1/readings", content=_reading_body(), headers=headers | extra)
            assert stored.status_code == 200, stored.text
    assert server.metric("rpmstore_http_refused_total", reason="unsupported_media_type") == 3
    assert server.metric("rpmstore_http_responses_total", route="/v1/readings", status="200") == 2


def test_a_device_over_its_rate_gets_429_and_others_are_served(
    serve: object, conn: psycopg.Connection
) -> None:
    assert callable(serve)
    # A refill so slow that the burst is all this test can use.
    server: Server = serve(EdgeLimits(device_rate_per_s=0.001, device_burst=3))
    fast, other = server.devices
    with httpx2.Client(base_url=server.base, timeout=_WAIT_S) as client:

        def post(device: Device) -> httpx2.Response:
            return client.post(
                "/v1/readings",
                content=_reading_body(),
                headers={
                    "Authorization": f"Bearer {device.token}",
                    "Content-Type": "application/json",
                },
            )

        assert [post(fast).status_code for _ in range(3)] == [200, 200, 200]
        limited = post(fast)
        assert limited.status_code == 429
        assert limited.json()["reason"] == "device_rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        assert post(other).status_code == 200
    assert server.metric("rpmstore_http_refused_total", reason="device_rate_limited") == 1
    assert server.metric("rpmstore_http_responses_total", route="/v1/readings", status="429") == 1
    # Refused before ingest: nothing of the refused request reached the database.
    batches = conn.execute("SELECT count(*) FROM rpm.ingest_batches").fetchone()
    assert batches == (4,)


def test_an_address_that_keeps_failing_authentication_gets_429(serve: object) -> None:
    assert callable(serve)
    server: Server = serve(EdgeLimits(auth_failure_rate_per_s=0.001, auth_failure_burst=5))
    good = {"Authorization": f"Bearer {server.devices[0].token}"}
    with httpx2.Client(base_url=server.base, timeout=_WAIT_S) as client:
        statuses = [
            client.post(
                "/v1/readings", content=_reading_body(), headers={"Authorization": "Bearer x"}
            ).status_code
            for _ in range(3)
        ]
        # Clinician routes count too: a forged JWT is a failed authentication.
        forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.forged"}
        statuses += [client.get("/v1/patients", headers=forged).status_code for _ in range(2)]
        assert statuses == [401] * 5
        blocked = client.post("/v1/readings", content=_reading_body(), headers=good)
        assert blocked.status_code == 429
        assert blocked.json()["reason"] == "auth_rate_limited"
        assert int(blocked.headers["Retry-After"]) >= 1
        assert client.get("/v1/patients", headers=bearer("dr", ["admin"])).status_code == 429
        # Probes and scrapes are never blinded.
        assert client.get("/healthz").status_code == 200
    assert server.metric("rpmstore_http_refused_total", reason="auth_rate_limited") == 2
    assert server.metric("rpmstore_http_responses_total", route="/v1/readings", status="401") == 3
    assert server.metric("rpmstore_http_responses_total", route="/v1/patients", status="401") == 2


def test_the_edge_is_in_the_openapi_document(serve: object) -> None:
    assert callable(serve)
    server: Server = serve(EdgeLimits())
    document = httpx2.get(f"{server.base}/openapi.json", timeout=_WAIT_S).json()
    answers = document["paths"]["/v1/readings"]["post"]["responses"]
    assert {"408", "415", "429"} <= set(answers)
