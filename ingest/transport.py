"""Broker URLs and their transport security, for every MQTT client of rpmstore.

``mqtts://user:password@host:8883?cafile=/path/ca.crt`` connects over TLS and verifies the
broker's certificate and host name against ``cafile`` (the system's trust store without it);
``certfile`` and ``keyfile`` add a client certificate (mutual TLS, the broker takes the
certificate's name as the username and no password is sent). ``mqtt://`` is plain MQTT,
accepted only to a loopback address unless the caller allows it explicitly: off this machine
readings are PHI, and a plain connection would carry them and the password in the clear.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt

PLAIN_PORT = 1883
TLS_PORT = 8883
_TLS_PARAMETERS = frozenset({"cafile", "certfile", "keyfile"})


class InsecureTransportError(ValueError):
    """A URL that would send credentials or readings in the clear off this machine."""


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where a broker is and how to reach it safely."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """Certificate and host name verified (``create_default_context``), TLS 1.2 at least."""
        context = ssl.create_default_context(cafile=self.cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def apply(self, client: mqtt.Client) -> None:
        """Give a paho client this endpoint's credentials and TLS settings (before connecting)."""
        if self.tls:
            client.tls_set_context(self.ssl_context())
        if self.username:
            client.username_pw_set(self.username, self.password)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_broker_url(url: str, *, allow_plaintext: bool = False) -> BrokerEndpoint:
    """Parse ``mqtt://`` or ``mqtts://``; refuse plain MQTT off loopback unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"a broker URL starts with mqtts:// or mqtt://, not {parts.scheme!r}")
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "mqtts"
    if not tls and not allow_plaintext and not is_loopback(host):
        raise InsecureTransportError(
            f"plain MQTT to {host} would send readings and passwords in the clear: use "
            "mqtts:// (docs/operations/tls.md), or set RPMSTORE_MQTT_ALLOW_PLAINTEXT=true "
            "for a network that is private by other means"
        )
    query = parse_qs(parts.query, strict_parsing=False)
    unknown = set(query) - _TLS_PARAMETERS
    if unknown or (query and not tls):
        raise ValueError(
            f"broker URL parameters {sorted(query)}: only {sorted(_TLS_PARAMETERS)}, "
            "and only with mqtts://"
        )

    def single(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    certfile, keyfile = single("certfile"), single("keyfile")
    if keyfile and not certfile:
        raise ValueError("keyfile= without certfile= in the broker URL")
    return BrokerEndpoint(
        host=host,
        port=parts.port or (TLS_PORT if tls else PLAIN_PORT),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password or "") if parts.username else None,
        tls=tls,
        cafile=single("cafile"),
        certfile=certfile,
        keyfile=keyfile,
    )
