"""``rpmstore serve`` over HTTPS: a real uvicorn process, real handshakes.

The certificate comes from the suite's CA (tests/conftest.py: ``test_pki``); clients verify
it, as a device or a clinician's browser would.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from rpmstore.localstack.pki import ensure_ca
from tests.conftest import TestPki, free_port

pytestmark = pytest.mark.slow  # real rpmstore serve processes over TLS


@dataclass(frozen=True)
class HttpsServer:
    port: int
    context: ssl.SSLContext  # trusts the suite's CA


def _wait_ready(
    url: str, context: ssl.SSLContext, server: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60  # start-up only: what is asserted is the answers
    while True:
        try:
            ready = httpx2.get(url, verify=context)
            break
        except httpx2.TransportError:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    assert ready.status_code == 200, ready.text


@pytest.fixture
def https_server(
    db_url: str, api_db_url: str, test_pki: TestPki, tmp_path: Path
) -> Iterator[HttpsServer]:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    test_pki.server_ca.issue_server("rpmstore-api", ["localhost", "127.0.0.1"]).write(cert, key)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "API_DATABASE_URL": api_db_url,
        "RPMSTORE_TLS_CERT_FILE": str(cert),
        "RPMSTORE_TLS_KEY_FILE": str(key),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    context = ssl.create_default_context(cafile=str(test_pki.server_ca.cert_path))
    try:
        _wait_ready(f"https://127.0.0.1:{port}/readyz", context, server, log)
        yield HttpsServer(port, context)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_a_client_that_trusts_the_ca_gets_answers_over_tls(https_server: HttpsServer) -> None:
    with httpx2.Client(verify=https_server.context) as client:
        health = client.get(f"https://localhost:{https_server.port}/healthz")
    assert health.status_code == 200


def test_plain_http_to_the_https_port_gets_no_answer(https_server: HttpsServer) -> None:
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"http://127.0.0.1:{https_server.port}/healthz")


def test_a_client_verifies_the_server_certificate(
    https_server: HttpsServer, tmp_path: Path
) -> None:
    stranger = ensure_ca(tmp_path / "other-ca", "not the server's CA")
    context = ssl.create_default_context(cafile=str(stranger.cert_path))
    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx2.get(f"https://127.0.0.1:{https_server.port}/healthz", verify=context)


def _serve_refused(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpmstore.cli", "serve", "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_serve_refuses_plain_http_off_loopback(db_url: str, api_db_url: str) -> None:
    """One forgotten variable must not put tokens and readings on the network in the clear."""
    env = {**os.environ, "DATABASE_URL": db_url, "API_DATABASE_URL": api_db_url}
    env.pop("RPMSTORE_HTTP_ALLOW_PLAINTEXT", None)
    refused = _serve_refused(["--host", "0.0.0.0"], env)
    assert refused.returncode == 2, refused.stderr
    assert "RPMSTORE_TLS_CERT_FILE" in refused.stderr
    assert "Traceback" not in refused.stderr
    half = _serve_refused(["--host", "127.0.0.1"], {**env, "RPMSTORE_TLS_CERT_FILE": "/x.crt"})
    assert half.returncode == 2 and "go together" in half.stderr
