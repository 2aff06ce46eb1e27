"""A Mosquitto broker from the Debian root, on a loopback port, with the shipped ingest policy."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rpmstore.localstack.debian_root import STATE_DIR_IN_ROOT, DebianRoot
from rpmstore.localstack.errors import StackUnavailableError
from rpmstore.localstack.pki import IssuedCertificate
from schema.credentials import mosquitto_password_hash

log = logging.getLogger(__name__)

INGEST_USER = "rpmstore-ingest"
GATEWAY_USER = "rpmstore-gateway"


def _shipped_policy(name: str) -> str:
    return (resources.files("ingest") / "broker" / name).read_text()


@dataclass(frozen=True)
class BrokerTls:
    """What the broker's TLS listeners present and check, all PEM.

    ``server``: the certificate devices verify against the CA they were given. ``device_ca``
    and ``device_crl``: who may log in with a certificate instead of a password (mutual TLS),
    and which of those certificates are revoked.
    """

    server: IssuedCertificate
    device_ca: bytes
    device_crl: bytes


@dataclass(frozen=True)
class MosquittoInstance:
    """A broker on loopback: plain MQTT on ``port``; with TLS (``configure(tls=...)``), MQTT
    over TLS with passwords on ``tls_port`` and with device certificates on ``mtls_port``."""

    root: DebianRoot
    name: str
    port: int
    tls_port: int | None = None
    mtls_port: int | None = None

    @property
    def _dir(self) -> str:
        return f"{STATE_DIR_IN_ROOT}/instances/{self.name}/mosquitto"

    @property
    def _pid_file(self) -> Path:
        return self.root.host_path(f"{self._dir}/mosquitto.pid")

    @property
    def log_file(self) -> Path:
        return self.root.host_path(f"{self._dir}/mosquitto.log")

    def configure(
        self,
        passwords: dict[str, str],
        device_accounts: Sequence[tuple[str, str]] = (),
        tls: BrokerTls | None = None,
    ) -> None:
        """Write the main config, the shipped policy, the password file and the TLS material.

        ``passwords``: service accounts in plain text (hashed here); ``device_accounts``:
        (device id, Mosquitto hash) pairs as registration stored them.
        """
        account = self.root.account("mosquitto")
        self.root.make_private_dir(self._dir, account)
        self.root.make_private_dir(f"{self._dir}/data", account)
        files: dict[str, str | bytes] = {
            "mosquitto.conf": (
                "# Written by rpmstore; policy comes from ingest/broker/limits.conf.\n"
                # Plain MQTT stays for processes on this machine only: it never leaves loopback.
                f"listener {self.port} 127.0.0.1\n"
                f"{self._tls_listeners() if tls is not None else ''}"
                f"password_file {self._dir}/passwd\n"
                f"acl_file {self._dir}/acl\n"
                f"persistence_location {self._dir}/data/\n"
                f"log_dest file {self._dir}/mosquitto.log\n"
                f"pid_file {self._dir}/mosquitto.pid\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                "connection_messages true\n"
                f"{_shipped_policy('limits.conf')}"
            ),
            "acl": _shipped_policy("acl"),
            "passwd": _password_file(passwords, device_accounts),
        }
        if tls is not None:
            files |= {
                "server.crt": tls.server.cert_pem,
                "server.key": tls.server.key_pem,
                "device-ca.crt": tls.device_ca,
                "device-ca.crl": tls.device_crl,
            }
        for file_name, content in files.items():
            self._write_private(file_name, content, account.uid, account.gid)

    def install_device_crl(self, crl_pem: bytes) -> None:
        """Replace the device CRL; a running broker reloads it (and its certificates) on SIGHUP."""
        account = self.root.account("mosquitto")
        self._write_private("device-ca.crl", crl_pem, account.uid, account.gid)
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _tls_listeners(self) -> str:
        if self.tls_port is None or self.mtls_port is None:
            raise ValueError("a broker with TLS needs tls_port and mtls_port")
        server = (
            f"certfile {self._dir}/server.crt\n"
            f"keyfile {self._dir}/server.key\n"
            # TLS 1.0 and 1.1 are deprecated (RFC 8996).
            "tls_version tlsv1.2\n"
        )
        return (
            f"listener {self.tls_port} 127.0.0.1\n{server}"
            f"listener {self.mtls_port} 127.0.0.1\n{server}"
            # Mutual TLS: a device proves itself with a certificate from the device CA, whose
            # common name becomes its username (the ACL's %u), so it sends no password. The
            # CRL is checked on every handshake; SIGHUP reloads it with the certificates.
            f"cafile {self._dir}/device-ca.crt\n"
            f"crlfile {self._dir}/device-ca.crl\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
        )

    def set_device_accounts(
        self, passwords: dict[str, str], device_accounts: Sequence[tuple[str, str]]
    ) -> None:
        """Replace the password file and make a running broker reload it (SIGHUP)."""
        account = self.root.account("mosquitto")
        self._write_private(
            "passwd", _password_file(passwords, device_accounts), account.uid, account.gid
        )
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _write_private(self, file_name: str, content: str | bytes, uid: int, gid: int) -> None:
        host = self.root.host_path(f"{self._dir}/{file_name}")
        temporary = host.with_name(f".{file_name}.tmp")
        temporary.unlink(missing_ok=True)
        # Owner-only from the first byte: the directory is private, and so is every file.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
        os.chown(temporary, uid, gid)
        temporary.replace(host)  # the broker never reads a half-written file

    def is_configured(self) -> bool:
        return self.root.host_path(f"{self._dir}/mosquitto.conf").exists()

    def pid(self) -> int | None:
        """The broker's pid when it is alive, else None (stale pid files are ignored)."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        # A stale pid file may name a pid the kernel has since given to another program.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        if b"mosquitto" not in cmdline:
            return None
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, IndexError):
            return None
        return None if status == "Z" else pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def listens_with_tls(self) -> bool:
        return self.tls_port is not None and _port_open(self.tls_port)

    def start(self) -> None:
        """Start the broker as a daemon (it outlives this process) and wait for its port."""
        if self.is_running():
            return
        self._pid_file.unlink(missing_ok=True)
        # -d: mosquitto detaches itself and writes pid_file, so no child of ours is left behind.
        launched = self.root.run(
            self.root.account("mosquitto"),
            ["/usr/sbin/mosquitto", "-d", "-c", f"{self._dir}/mosquitto.conf"],
            check=False,
            timeout=30,
        )
        if launched.returncode != 0:
            raise StackUnavailableError(
                f"mosquitto exited with status {launched.returncode}: "
                f"{launched.stderr.strip()} {self._log_tail()}"
            )
        # Every listener of the written config, not just the plain one: mosquitto opens them one
        # after another, and a client of the TLS listeners must not be refused right after start.
        ports = self._configured_ports()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(_port_open(port) for port in ports) and self.is_running():
                log.info("mosquitto started", extra={"instance": self.name, "port": self.port})
                return
            time.sleep(0.05)
        raise StackUnavailableError(f"mosquitto did not open ports {ports}: {self._log_tail()}")

    def _configured_ports(self) -> list[int]:
        config = self.root.host_path(f"{self._dir}/mosquitto.conf").read_text()
        return [int(port) for port in _LISTENER.findall(config)] or [self.port]

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL simulates a crash)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.pid() is None:
                self._pid_file.unlink(missing_ok=True)
                log.info("mosquitto stopped", extra={"instance": self.name, "signal": sig.name})
                return
            time.sleep(0.05)
        raise StackUnavailableError(f"mosquitto (pid {pid}) did not stop within 20 s")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root.host_path(self._dir), ignore_errors=True)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _password_file(passwords: dict[str, str], device_accounts: Sequence[tuple[str, str]]) -> str:
    lines = [f"{user}:{mosquitto_password_hash(secret)}" for user, secret in passwords.items()]
    lines += [f"{device}:{password_hash}" for device, password_hash in device_accounts]
    return "".join(f"{line}\n" for line in lines)


_LISTENER = re.compile(r"^listener (\d+) ", re.MULTILINE)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
