"""One PostgreSQL 17 + TimescaleDB cluster living inside the Debian root, on a loopback port."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rpmstore.localstack.debian_root import PG_BIN, STATE_DIR_IN_ROOT, DebianRoot
from rpmstore.localstack.errors import StackUnavailableError
from rpmstore.localstack.pki import IssuedCertificate, write_private

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
_START_ATTEMPTS = 5

# Sized for a developer machine or CI runner; durability settings stay at their safe defaults
# (fsync, synchronous_commit, full_page_writes) because ingest acknowledges only after COMMIT.
_SERVER_CONFIG = """\
# Written by rpmstore; edit rpmstore/localstack/postgres.py instead.
listen_addresses = '127.0.0.1'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
shared_buffers = 512MB
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 2GB
max_worker_processes = 32
max_parallel_workers = 4
timescaledb.max_background_workers = 16
max_locks_per_transaction = 256
log_min_duration_statement = -1
log_line_prefix = '%m [%p] %q%u@%d '
"""


# Written by configure_tls; paths relative to the data directory.
_TLS_CONFIG = """\
# Written by rpmstore; edit rpmstore/localstack/postgres.py instead.
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
"""


@dataclass(frozen=True)
class PostgresInstance:
    root: DebianRoot
    name: str
    port: int

    @property
    def _dir(self) -> str:
        return f"{STATE_DIR_IN_ROOT}/instances/{self.name}/postgres"

    @property
    def data_dir(self) -> str:
        return f"{self._dir}/data"

    @property
    def socket_dir(self) -> str:
        return f"{self._dir}/sock"

    @property
    def log_file(self) -> Path:
        return self.root.host_path(f"{self._dir}/server.log")

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.root.run(
            self.root.account("postgres"),
            [f"{PG_BIN}/pg_ctl", "-D", self.data_dir, *args],
            check=check,
        )

    def is_initialized(self) -> bool:
        return self.root.host_path(f"{self.data_dir}/PG_VERSION").exists()

    def initialize(self, superuser_password: str) -> None:
        """Create the cluster with password (SCRAM) authentication for every connection."""
        account = self.root.account("postgres")
        self.root.make_private_dir(self._dir, account)
        self.root.make_private_dir(self.socket_dir, account)
        password_file = self.root.host_path(f"{self._dir}/.initdb-password")
        password_file.write_text(superuser_password + "\n")
        os.chown(password_file, account.uid, account.gid)
        password_file.chmod(0o600)
        try:
            self.root.run(
                account,
                [
                    f"{PG_BIN}/initdb",
                    "-D",
                    self.data_dir,
                    "-U",
                    SUPERUSER,
                    f"--pwfile={self._dir}/.initdb-password",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
            )
        except subprocess.CalledProcessError as exc:
            raise StackUnavailableError(f"initdb failed: {exc.stderr.strip()}") from exc
        finally:
            password_file.unlink(missing_ok=True)
        conf = self.root.host_path(f"{self.data_dir}/rpmstore.conf")
        conf.write_text(_SERVER_CONFIG)
        os.chown(conf, account.uid, account.gid)
        with self.root.host_path(f"{self.data_dir}/postgresql.conf").open("a") as main_conf:
            main_conf.write("include 'rpmstore.conf'\n")

    def configure_tls(self, server: IssuedCertificate) -> None:
        """Serve TLS with ``server`` (clients may then ask for sslmode=verify-full against the
        CA that issued it); a running server reloads it. Loopback clients may still connect
        without TLS: the stack listens on 127.0.0.1 only."""
        account = self.root.account("postgres")
        data = self.root.host_path(self.data_dir)
        for name, content in (("server.crt", server.cert_pem), ("server.key", server.key_pem)):
            # PostgreSQL refuses a key that its owner does not own alone (0600).
            write_private(data / name, content)
            os.chown(data / name, account.uid, account.gid)
        tls_conf = data / "rpmstore-tls.conf"
        tls_conf.write_text(_TLS_CONFIG)
        os.chown(tls_conf, account.uid, account.gid)
        main_conf = data / "postgresql.conf"
        include = "include_if_exists 'rpmstore-tls.conf'\n"
        if include not in main_conf.read_text():  # clusters made before TLS get it here
            with main_conf.open("a") as handle:
                handle.write(include)
        if self.is_running():
            self._pg_ctl("reload")  # SSL settings and files are reloadable (PostgreSQL 10+)

    def is_running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections (a no-op when it already runs)."""
        if self.is_running():
            return
        # A crash leaves postmaster.pid behind; PostgreSQL itself checks whether that pid lives.
        # Right after a crash, orphaned backends may still hold the old shared memory for a
        # moment ("pre-existing shared memory block is still in use"), hence a few attempts.
        for attempt in range(_START_ATTEMPTS):
            result = self._pg_ctl(
                "start",
                "--wait",
                "--timeout=120",
                f"--log={self._dir}/server.log",
                f"--options=-p {self.port} -k {self.socket_dir}",
                check=False,
            )
            if result.returncode == 0 or attempt == _START_ATTEMPTS - 1:
                break
            time.sleep(1)
        if result.returncode != 0:
            tail = self._log_tail()
            raise StackUnavailableError(
                f"PostgreSQL did not start on port {self.port}: {result.stderr.strip()}\n{tail}"
            )
        log.info("postgres started", extra={"instance": self.name, "port": self.port})

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "--wait", "--timeout=120", f"--mode={mode}", check=False)
        if result.returncode != 0 and self.is_running():
            raise StackUnavailableError(f"PostgreSQL did not stop: {result.stderr.strip()}")
        log.info("postgres stopped", extra={"instance": self.name, "mode": mode})

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (fault tests)."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)

    def postmaster_pid(self) -> int | None:
        pid_file = self.root.host_path(f"{self.data_dir}/postmaster.pid")
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def destroy(self) -> None:
        """Stop the server and delete the instance's files (test clusters)."""
        if self.is_initialized() and self.is_running():
            self.stop(mode="immediate")
        shutil.rmtree(self.root.host_path(self._dir), ignore_errors=True)


def new_password() -> str:
    return secrets.token_urlsafe(24)
