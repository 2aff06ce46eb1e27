"""``rpmstore db up|down|status|url`` on the embedded (chroot) stack, including crash recovery."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from api.auth import AuthConfig
from ingest.transport import parse_broker_url
from rpmstore.cli import main
from rpmstore.localstack import stack
from rpmstore.localstack.debian_root import STATE_DIR_IN_ROOT, DebianRoot
from rpmstore.localstack.mosquitto import MosquittoInstance
from rpmstore.localstack.pki import ensure_ca
from rpmstore.localstack.postgres import PostgresInstance
from rpmstore.settings import Settings
from schema.migrate import Migrator
from schema.registry import register_device
from tests.conftest import Broker, TestPki, free_port
from tests.integration.test_device_broker_accounts import connect_code
from tests.integration.test_mqtt_tls import mqtt_connect

pytestmark = pytest.mark.slow  # starts and stops whole local stacks


@pytest.fixture
def stack_settings(
    tmp_path: Path, debian_root: DebianRoot, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """A private home and instance that share the machine's cached Debian root."""
    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / debian_root.path.name).symlink_to(debian_root.path)
    values = {
        "RPMSTORE_HOME": str(tmp_path),
        "RPMSTORE_INSTANCE": f"pytest-stack-{os.getpid()}",
        "RPMSTORE_STACK": "chroot",
        "RPMSTORE_PG_PORT": str(free_port()),
        "RPMSTORE_MQTT_PORT": str(free_port()),
        "RPMSTORE_MQTT_TLS_PORT": str(free_port()),
        "RPMSTORE_MQTT_MTLS_PORT": str(free_port()),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("DATABASE_URL", "MQTT_URL", "RPMSTORE_DATABASE_URL", "RPMSTORE_MQTT_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    yield settings
    stack.down(settings)
    PostgresInstance(debian_root, settings.instance, settings.pg_port).destroy()
    MosquittoInstance(debian_root, settings.instance, settings.mqtt_port).destroy()
    shutil.rmtree(
        debian_root.host_path(f"{STATE_DIR_IN_ROOT}/instances/{settings.instance}"),
        ignore_errors=True,
    )


def test_up_is_idempotent_and_recovers_from_a_crash(
    stack_settings: Settings, debian_root: DebianRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = stack.up(stack_settings)
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survives (note text)")
        conn.execute("INSERT INTO survives VALUES ('committed before the crash')")
    assert stack.up(stack_settings) == urls

    # Crash both servers the hard way, then bring the stack up again.
    postgres = PostgresInstance(debian_root, stack_settings.instance, stack_settings.pg_port)
    mosquitto = MosquittoInstance(debian_root, stack_settings.instance, stack_settings.mqtt_port)
    postgres.kill()
    broker_pid = mosquitto.pid()
    assert broker_pid is not None
    os.kill(broker_pid, signal.SIGKILL)
    assert stack.up(stack_settings) == urls
    with psycopg.connect(urls.database_url) as conn:
        assert conn.execute("SELECT note FROM survives").fetchall() == [
            ("committed before the crash",)
        ]

    assert main(["db", "status"]) == 0
    status = capsys.readouterr().out
    assert "postgres:    running" in status
    assert "mosquitto:   running" in status
    with psycopg.connect(urls.admin_database_url or "") as conn:
        license_row = conn.execute("SHOW timescaledb.license").fetchone()
    assert license_row is not None
    assert f"edition:     {license_row[0]}" in status

    assert main(["db", "down"]) == 0
    assert main(["db", "down"]) == 0  # stopping a stopped stack is fine
    assert main(["db", "status"]) == 1
    assert "postgres:    stopped" in capsys.readouterr().out


def test_the_stack_makes_its_ca_and_serves_mqtt_over_tls(stack_settings: Settings) -> None:
    """``db up`` makes the stack's CAs (keys owner-only) and hands out an mqtts:// URL that
    verifies the broker against them; the TLS listener refuses plain MQTT; PostgreSQL
    serves TLS that sslmode=verify-full accepts with the stack's CA and no other."""
    urls = stack.up(stack_settings)
    endpoint = parse_broker_url(urls.mqtt_url)
    assert endpoint.tls and endpoint.port == stack_settings.mqtt_tls_port
    pki = stack.pki_dir(stack_settings)
    assert endpoint.cafile == str(pki / "ca" / "ca.crt")
    for key in (pki / "ca" / "ca.key", pki / "device-ca" / "ca.key"):
        assert key.stat().st_mode & 0o077 == 0
    assert (pki / "ca").stat().st_mode & 0o077 == 0
    code = mqtt_connect(
        endpoint.port,
        context=endpoint.ssl_context(),
        username=endpoint.username,
        password=endpoint.password,
    )
    assert code == 0
    assert mqtt_connect(endpoint.port, context=None) is None
    # PostgreSQL serves TLS from the same CA: sslmode=verify-full works against the stack.
    verified = make_conninfo(
        urls.database_url, sslmode="verify-full", sslrootcert=str(pki / "ca" / "ca.crt")
    )
    with psycopg.connect(verified) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None and row[0] is True and row[1] in ("TLSv1.2", "TLSv1.3")
    stranger = ensure_ca(stack_settings.home / "other-ca", "not the stack's CA")
    untrusting = make_conninfo(
        urls.database_url, sslmode="verify-full", sslrootcert=str(stranger.cert_path)
    )
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(untrusting).close()
    ca_before = (pki / "ca" / "ca.crt").read_bytes()
    assert stack.up(stack_settings) == urls
    assert (pki / "ca" / "ca.crt").read_bytes() == ca_before  # kept, like the passwords


def test_device_certificates_are_issued_and_revoked(
    stack_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``broker cert`` issues a device certificate the mutual-TLS listener accepts;
    ``broker revoke`` puts it on the CRL, and the broker refuses it from then on."""
    stack.up(stack_settings)
    out = tmp_path / "device"
    assert main(["broker", "cert", "device-7", "--out", str(out)]) == 0
    assert (out / "device-7.key").stat().st_mode & 0o077 == 0

    def connect() -> int | str | None:
        context = ssl.create_default_context(cafile=str(out / "ca.crt"))
        context.load_cert_chain(out / "device-7.crt", out / "device-7.key")
        try:
            return mqtt_connect(stack_settings.mqtt_mtls_port, context=context)
        except ssl.SSLError as error:
            return str(error)

    assert connect() == 0
    assert main(["broker", "revoke", str(out / "device-7.crt")]) == 0
    # The CLI made the running broker reload its CRL (SIGHUP); a restart reads it for sure,
    # so the assertion does not depend on how soon the reload lands.
    assert main(["db", "down"]) == 0
    stack.up(stack_settings)
    assert connect() != 0
    assert main(["broker", "cert", "a/b", "--out", str(out)]) == 2  # never widens a topic
    assert "not a device id" in capsys.readouterr().err
    stranger = ensure_ca(tmp_path / "other-ca", "rpmstore device CA (same name, other key)")
    stranger.issue_client("device-7").write(tmp_path / "other.crt", tmp_path / "other.key")
    assert main(["broker", "revoke", str(tmp_path / "other.crt")]) == 2
    assert "not issued by this stack's device CA" in capsys.readouterr().err


def test_url_prints_what_processes_should_use(
    stack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = stack.up(stack_settings)
    assert main(["db", "url", "--export"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"export DATABASE_URL='{urls.database_url}'" in lines
    assert f"export MQTT_URL='{urls.mqtt_url}'" in lines


def test_the_stack_generates_its_own_jwt_secret(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without RPMSTORE_JWT_SECRET, `rpmstore token` (and serve, demo, simulate) use the secret
    generated for this stack instance, kept with its passwords; never one from the source."""
    monkeypatch.delenv("RPMSTORE_JWT_SECRET")
    urls = stack.up(stack_settings)
    assert urls.jwt_secret is not None and len(urls.jwt_secret) >= 32
    assert stack.up(stack_settings).jwt_secret == urls.jwt_secret  # kept, like the passwords
    state = stack_settings.home / "instances" / f"{stack_settings.instance}.json"
    assert state.stat().st_mode & 0o077 == 0
    assert main(["token", "--subject", "dr-s", "--role", "admin"]) == 0
    token = capsys.readouterr().out.strip()
    auth = AuthConfig.build(
        secret=urls.jwt_secret,
        algorithm="HS256",
        public_key=None,
        issuer=stack_settings.jwt_issuer,
        audience=stack_settings.jwt_audience,
    )
    assert auth.verify(token).subject == "dr-s"
    # Pointed at other servers, a process is their deployment's: the stack's secret is not used.
    monkeypatch.setenv("DATABASE_URL", urls.database_url)
    assert main(["token", "--subject", "dr-s", "--role", "admin"]) == 2
    assert "RPMSTORE_JWT_SECRET" in capsys.readouterr().err


def test_explicit_urls_point_everything_at_existing_servers(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With DATABASE_URL and MQTT_URL set, nothing local is started and they are used as given."""
    database = "postgresql://app@db.internal:5432/rpm?sslmode=verify-full"
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("MQTT_URL", "mqtts://ingest@broker.internal:8883")
    assert stack.choose_backend(Settings()) == "external"
    assert main(["db", "url"]) == 0
    out = capsys.readouterr().out
    assert f"DATABASE_URL='{database}'" in out
    assert "MQTT_URL='mqtts://ingest@broker.internal:8883'" in out
    # Off loopback without verify-full, the database URL is refused (rpmstore/db_transport.py).
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal:5432/rpm")
    assert main(["db", "url"]) == 2
    assert "sslmode=verify-full" in capsys.readouterr().err
    assert stack.server_status(stack_settings).postgres_running is False


def test_commands_without_a_stack_say_what_to_do(
    stack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack_settings.database_url is None
    assert main(["migrate", "status"]) == 2
    assert "run 'rpmstore db up'" in capsys.readouterr().err


def test_broker_sync_lets_registered_devices_log_in(
    stack_settings: Settings,
    debian_root: DebianRoot,
    test_pki: TestPki,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = stack.up(stack_settings)
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        Migrator(conn).up()
        device = register_device(
            conn, kind="thermometer", manufacturer="Acme", model="T", serial_number="T-1"
        )
    assert main(["broker", "sync"]) == 0
    assert "1 active devices" in capsys.readouterr().out
    broker = Broker(
        MosquittoInstance(debian_root, stack_settings.instance, stack_settings.mqtt_port),
        {},
        test_pki,  # unused: connect_code speaks plain MQTT on loopback
    )
    codes = [connect_code(broker, str(device.device_id), device.token) for _ in range(50)]
    assert any(not code.is_failure for code in codes)
    # A later db up keeps the device accounts (it rebuilds the password file from the database).
    stack.up(stack_settings)
    assert not connect_code(broker, str(device.device_id), device.token).is_failure
