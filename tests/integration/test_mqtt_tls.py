"""MQTT over TLS against the suite's real Mosquitto: real handshakes, real refusals.

The broker (tests/conftest.py) listens with TLS and passwords on ``tls_port`` and with mutual
TLS (device certificates, a CRL) on ``mtls_port``. Each case opens a socket, does the TLS
handshake with Python's ``ssl`` and sends an MQTT 3.1.1 CONNECT by hand, so what is asserted is
the broker's own answer (CONNACK, or the connection refused) rather than a client library's.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ingest.mqtt import shutdown_client
from ingest.transport import parse_broker_url
from rpmstore.localstack.mosquitto import GATEWAY_USER
from rpmstore.localstack.pki import IssuedCertificate, ensure_ca
from tests.conftest import Broker

ACCEPTED = 0
NOT_AUTHORIZED = 5
# Only a safety net against a hang: every case ends with an answer or the broker closing.
_SAFETY_TIMEOUT_S = 30


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean session
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    if password is not None:
        flags |= 0x40
        payload += _utf8(password)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + (30).to_bytes(2, "big") + payload
    assert len(body) < 128  # one-byte remaining length keeps the encoder trivial
    return bytes([0x10, len(body)]) + body


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def mqtt_connect(
    port: int,
    *,
    context: ssl.SSLContext | None,
    username: str | None = None,
    password: str | None = None,
) -> int | None:
    """CONNECT to 127.0.0.1:port and return the CONNACK's return code; None when the broker
    closed the connection instead of answering. TLS errors propagate (ssl.SSLError)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=_SAFETY_TIMEOUT_S)
    sock: socket.socket = (
        context.wrap_socket(raw, server_hostname="127.0.0.1") if context is not None else raw
    )
    with sock:
        try:
            sock.sendall(_connect_packet("tls-test", username, password))
            connack = _read_exactly(sock, 4)
        except ConnectionResetError:
            return None
    if len(connack) < 4:
        return None
    assert connack[0] == 0x20, connack
    return connack[3]


def _client_context(cafile: Path, cert: IssuedCertificate | None, tmp_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        cert.write(tmp_path / "client.crt", tmp_path / "client.key")
        context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    return context


def _refusal(port: int, context: ssl.SSLContext) -> str:
    """How the broker refused this handshake: its TLS alert, or "closed"; fails if it
    answered the CONNECT instead."""
    try:
        code = mqtt_connect(port, context=context)
    except ssl.SSLError as error:
        return str(error)
    assert code is None, f"the broker answered CONNACK {code} instead of refusing"
    return "closed"


def test_tls_client_that_trusts_the_ca_logs_in(mqtt_broker: Broker) -> None:
    endpoint = parse_broker_url(mqtt_broker.url(GATEWAY_USER))
    assert endpoint.tls and endpoint.port == mqtt_broker.instance.tls_port
    code = mqtt_connect(
        endpoint.port,
        context=endpoint.ssl_context(),
        username=endpoint.username,
        password=endpoint.password,
    )
    assert code == ACCEPTED


def test_tls_client_with_a_wrong_password_is_refused(mqtt_broker: Broker) -> None:
    endpoint = parse_broker_url(mqtt_broker.url(GATEWAY_USER))
    code = mqtt_connect(
        endpoint.port, context=endpoint.ssl_context(), username=GATEWAY_USER, password="wrong"
    )
    assert code == NOT_AUTHORIZED


def test_plain_mqtt_to_the_tls_listener_is_refused(mqtt_broker: Broker) -> None:
    assert mqtt_broker.instance.tls_port is not None
    password = mqtt_broker.passwords[GATEWAY_USER]
    code = mqtt_connect(
        mqtt_broker.instance.tls_port, context=None, username=GATEWAY_USER, password=password
    )
    assert code is None


def test_a_client_verifies_the_broker_against_its_ca(mqtt_broker: Broker, tmp_path: Path) -> None:
    """A client given another CA refuses the broker: the certificate is checked, not just
    the encryption set up (a man in the middle would present his own)."""
    assert mqtt_broker.instance.tls_port is not None
    stranger = ensure_ca(tmp_path / "other-ca", "not the broker's CA")
    context = ssl.create_default_context(cafile=str(stranger.cert_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        mqtt_connect(mqtt_broker.instance.tls_port, context=context)


def test_device_certificate_logs_in_without_a_password(mqtt_broker: Broker, tmp_path: Path) -> None:
    assert mqtt_broker.instance.mtls_port is not None
    cert = mqtt_broker.pki.device_ca.issue_client("device-a")
    context = _client_context(mqtt_broker.pki.server_ca.cert_path, cert, tmp_path)
    assert mqtt_connect(mqtt_broker.instance.mtls_port, context=context) == ACCEPTED


def test_mutual_tls_without_a_certificate_is_refused(mqtt_broker: Broker, tmp_path: Path) -> None:
    assert mqtt_broker.instance.mtls_port is not None
    context = _client_context(mqtt_broker.pki.server_ca.cert_path, None, tmp_path)
    # Mosquitto ends the handshake without an alert here: no reason to compare, only that the
    # connection never reaches MQTT (_refusal fails on any CONNACK).
    assert _refusal(mqtt_broker.instance.mtls_port, context)


def test_expired_device_certificate_is_refused(mqtt_broker: Broker, tmp_path: Path) -> None:
    assert mqtt_broker.instance.mtls_port is not None
    now = dt.datetime.now(dt.UTC)
    cert = mqtt_broker.pki.device_ca.issue_client(
        "device-a", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    context = _client_context(mqtt_broker.pki.server_ca.cert_path, cert, tmp_path)
    # Whether Mosquitto sends the "certificate expired" alert before closing varies between
    # runs; that it refuses does not (the fresh certificate above is accepted).
    assert _refusal(mqtt_broker.instance.mtls_port, context)


def test_revoked_device_certificate_is_refused(mqtt_broker: Broker, tmp_path: Path) -> None:
    """Issued like the accepted one above, by the same CA, and listed in the CRL: the CRL is
    the only difference. (Mosquitto closes without an alert, so there is no reason to read.)"""
    assert mqtt_broker.instance.mtls_port is not None
    context = _client_context(
        mqtt_broker.pki.server_ca.cert_path, mqtt_broker.pki.revoked_device, tmp_path
    )
    assert _refusal(mqtt_broker.instance.mtls_port, context)


def test_certificate_from_another_ca_is_refused(mqtt_broker: Broker, tmp_path: Path) -> None:
    """A client certificate of the server CA is not a device identity: only the device CA's
    are (otherwise any certificate the stack issues could publish as a device)."""
    assert mqtt_broker.instance.mtls_port is not None
    cert = mqtt_broker.pki.server_ca.issue_client("device-a")
    context = _client_context(mqtt_broker.pki.server_ca.cert_path, cert, tmp_path)
    assert _refusal(mqtt_broker.instance.mtls_port, context)


def _publish_reasons(
    port: int, context: ssl.SSLContext, topics: list[str]
) -> dict[str, ReasonCode]:
    """Publish QoS 1 to each topic over mutual TLS with paho (MQTT 5); the PUBACK reasons."""
    reasons: dict[int, ReasonCode] = {}
    done = threading.Event()
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set_context(context)

    def on_publish(_c: object, _u: object, mid: int, code: ReasonCode, _p: object) -> None:
        reasons[mid] = code
        if len(reasons) == len(topics):
            done.set()

    client.on_connect = lambda *_args: connected.set()
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(_SAFETY_TIMEOUT_S), "no CONNACK"
        mids = {client.publish(topic, b"{}", qos=1).mid: topic for topic in topics}
        assert done.wait(_SAFETY_TIMEOUT_S), "no PUBACK"
    finally:
        shutdown_client(client)
    return {mids[mid]: code for mid, code in reasons.items()}


def test_a_device_certificate_publishes_as_its_device_only(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    """The certificate's name is the username the ACL's %u pattern checks: device-a may
    write its own readings topic and not device-b's."""
    assert mqtt_broker.instance.mtls_port is not None
    cert = mqtt_broker.pki.device_ca.issue_client("device-a")
    context = _client_context(mqtt_broker.pki.server_ca.cert_path, cert, tmp_path)
    own, other = "rpm/v1/devices/device-a/readings", "rpm/v1/devices/device-b/readings"
    reasons = _publish_reasons(mqtt_broker.instance.mtls_port, context, [own, other])
    assert not reasons[own].is_failure
    assert reasons[other].is_failure and reasons[other].getName() == "Not authorized"
