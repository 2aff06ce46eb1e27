"""The rpmstore command against a real database (DATABASE_URL points it there)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import psycopg
import pytest

from rpmstore.cli import main
from schema.migrate import discover_layer, discover_migrations
from schema.registry import register_device
from tests.conftest import free_port


@pytest.fixture
def point_at(monkeypatch: pytest.MonkeyPatch) -> object:
    def point(url: str) -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("MQTT_URL", "mqtt://unused@127.0.0.1:1")

    return point


def test_migrate_up_then_status(
    empty_db_url: str, point_at: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(point_at)
    point_at(empty_db_url)
    labels = [m.label for m in discover_migrations()]
    assert main(["migrate", "status"]) == 0
    assert all(line.endswith("pending") for line in capsys.readouterr().out.splitlines())
    assert main(["migrate", "up"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        *(f"applied {label}" for label in labels),
        f"applied layer {discover_layer().checksum[:12]}",
    ]
    assert main(["migrate", "up"]) == 0
    assert capsys.readouterr().out.strip() == "schema is up to date"
    assert main(["migrate", "down", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"reverted {labels[-1]}"


def test_demo_prints_readings_read_back_from_timescaledb(
    db_url: str, point_at: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(point_at)
    point_at(db_url)
    assert main(["demo", "--basic"]) == 0
    out = capsys.readouterr().out
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT count(*) FROM rpm.readings").fetchone()
        batches = conn.execute("SELECT count(*), sum(row_count) FROM rpm.ingest_batches").fetchone()
    assert stored is not None
    assert stored[0] > 0
    assert batches == (1, stored[0])
    assert f"stored {stored[0]} readings in ingest batch" in out
    assert f"read back {stored[0]} readings from the rpm.readings hypertable" in out
    # One printed line per reading, after the two header lines.
    table = out.split("hypertable:\n", 1)[1].splitlines()
    assert len(table) == stored[0] + 1


def test_unreachable_database_is_a_clear_error(
    point_at: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(point_at)
    point_at("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    assert main(["migrate", "status"]) == 2
    assert "rpmstore: error:" in capsys.readouterr().err


def test_broker_passwd_prints_a_line_per_active_device(
    db_url: str, point_at: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(point_at)
    point_at(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        active = register_device(
            conn, kind="scale", manufacturer="Acme", model="S", serial_number="1"
        ).device_id
        retired = register_device(
            conn, kind="scale", manufacturer="Acme", model="S", serial_number="2"
        ).device_id
        conn.execute("UPDATE rpm.devices SET status = 'retired' WHERE device_id = %s", (retired,))
    assert main(["broker", "passwd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [str(active)]
    assert lines[0].split(":", 1)[1].startswith("$7$101$")


def _serve_until_ready(args: list[str], env: dict[str, str], log: Path) -> dict[str, object]:
    """Start ``rpmstore serve`` with ``args``, wait for /readyz, stop it; the readiness body."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "rpmstore.cli", "serve", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx2.get(f"http://127.0.0.1:{port}/readyz")
                break
            except httpx2.TransportError:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert ready.status_code == 200, ready.text
        body: dict[str, object] = ready.json()
        return body
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.slow  # two worker processes, each starting its pools
def test_serve_with_several_worker_processes(db_url: str, api_db_url: str, tmp_path: Path) -> None:
    """`rpmstore serve --workers 2` starts worker processes that each find the database."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "API_DATABASE_URL": api_db_url,
        "MQTT_URL": "mqtt://unused@127.0.0.1:1",
    }
    ready = _serve_until_ready(["--workers", "2"], env, tmp_path / "serve.log")
    assert ready["status"] == "ready"


@pytest.mark.slow  # rpmstore serve subprocesses
@pytest.mark.parametrize("role", ["api", "ingest"])
def test_a_production_role_needs_only_its_own_servers(
    role: str, db_url: str, api_db_url: str, tmp_path: Path
) -> None:
    """`serve --role api` starts with DATABASE_URL and API_DATABASE_URL, `--role ingest` with
    DATABASE_URL: no MQTT_URL, and an RPMSTORE_HOME where no local stack was ever started, so
    neither can have gone through the development stack."""
    env = {k: v for k, v in os.environ.items() if k not in {"MQTT_URL", "API_DATABASE_URL"}}
    env |= {"DATABASE_URL": db_url, "RPMSTORE_HOME": str(tmp_path / "no-stack")}
    if role == "api":
        env["API_DATABASE_URL"] = api_db_url
    else:  # devices have their own tokens: the ingest role holds no clinician-token key
        del env["RPMSTORE_JWT_SECRET"]
    ready = _serve_until_ready(["--role", role], env, tmp_path / "serve.log")
    assert ready["status"] == "ready"
    assert not (tmp_path / "no-stack").exists()


@pytest.mark.slow  # rpmstore serve subprocesses
@pytest.mark.parametrize("role", ["all", "api"])
def test_serve_refuses_to_start_without_a_token_key(
    role: str, db_url: str, api_db_url: str, tmp_path: Path
) -> None:
    """DATABASE_URL set, RPMSTORE_JWT_SECRET forgotten, no local stack: `serve` on 0.0.0.0 must
    not start an API whose tokens anyone could mint. One line on stderr, exit 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "RPMSTORE_JWT_SECRET"}
    env |= {
        "DATABASE_URL": db_url,
        "API_DATABASE_URL": api_db_url,
        "RPMSTORE_HOME": str(tmp_path / "no-stack"),
    }
    command = [sys.executable, "-m", "rpmstore.cli", "serve", "--host", "0.0.0.0"]
    refused = subprocess.run(
        [*command, "--port", str(free_port()), "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "RPMSTORE_JWT_SECRET" in refused.stderr
    assert "Traceback" not in refused.stderr
    # A short secret is refused the same way.
    short = subprocess.run(
        [*command, "--port", str(free_port()), "--role", role],
        env={**env, "RPMSTORE_JWT_SECRET": "too-short"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert short.returncode == 2, short.stderr
    assert "at least 32" in short.stderr
    assert "Traceback" not in short.stderr
