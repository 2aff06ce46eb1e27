"""Broker URLs (ingest/transport.py): TLS parameters, and plain MQTT refused off loopback."""

from __future__ import annotations

import pytest

from ingest.transport import InsecureTransportError, parse_broker_url


def test_mqtts_url_with_its_ca_and_client_certificate() -> None:
    endpoint = parse_broker_url(
        "mqtts://dev%40ice:p%3Ass@broker.example:8884"
        "?cafile=/etc/rpm/ca.crt&certfile=/etc/rpm/d.crt&keyfile=/etc/rpm/d.key"
    )
    assert endpoint.tls
    assert (endpoint.host, endpoint.port) == ("broker.example", 8884)
    assert (endpoint.username, endpoint.password) == ("dev@ice", "p:ss")
    assert endpoint.cafile == "/etc/rpm/ca.crt"
    assert (endpoint.certfile, endpoint.keyfile) == ("/etc/rpm/d.crt", "/etc/rpm/d.key")


def test_default_ports() -> None:
    assert parse_broker_url("mqtts://broker.example").port == 8883
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883


@pytest.mark.parametrize("host", ["broker.example", "10.0.0.5", "[2001:db8::1]"])
def test_plain_mqtt_off_loopback_is_refused(host: str) -> None:
    with pytest.raises(InsecureTransportError, match="mqtts://"):
        parse_broker_url(f"mqtt://ingest:secret@{host}:1883")
    assert not parse_broker_url(f"mqtt://{host}", allow_plaintext=True).tls


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.53"])
def test_plain_mqtt_on_loopback_is_allowed(host: str) -> None:
    assert not parse_broker_url(f"mqtt://ingest:secret@{host}:1883").tls


@pytest.mark.parametrize(
    "url",
    [
        "http://broker.example",
        "mqtts://broker.example?verify=no",  # no switch to turn verification off
        "mqtt://127.0.0.1?cafile=/ca.crt",  # TLS parameters on a plain URL: a mistake
        "mqtts://broker.example?keyfile=/d.key",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_broker_url(url)
