"""A cached Debian trixie root holding PostgreSQL 17, TimescaleDB (Apache-2 edition) and Mosquitto.

Built once with ``debootstrap`` into ``$RPMSTORE_HOME/roots`` and entered with ``chroot``, so a
machine without a Docker engine still runs the real servers. The folder name carries a hash of the
recipe: changing the package list builds a new root instead of mutating one in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rpmstore.localstack.errors import StackUnavailableError

log = logging.getLogger(__name__)

SUITE = "trixie"
PACKAGES = ("postgresql-17", "postgresql-17-timescaledb", "mosquitto")
PG_BIN = "/usr/lib/postgresql/17/bin"
# Everything rpmstore keeps inside the root (instances, sockets, logs) lives below this path.
STATE_DIR_IN_ROOT = "/var/lib/rpmstore"


def recipe_digest() -> str:
    recipe = f"{SUITE}|minbase|{','.join(PACKAGES)}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Account:
    """A user of the root, by its numeric ids (names would resolve against the host's passwd)."""

    uid: int
    gid: int


@dataclass(frozen=True)
class DebianRoot:
    path: Path

    def host_path(self, path_in_root: str) -> Path:
        """The host path of a path inside the root."""
        return self.path / path_in_root.lstrip("/")

    def account(self, name: str) -> Account:
        for line in self.host_path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return Account(uid=int(fields[2]), gid=int(fields[3]))
        raise StackUnavailableError(f"user {name!r} is missing from the Debian root at {self.path}")

    def command(self, account: Account, argv: Sequence[str]) -> list[str]:
        """The host command line that runs ``argv`` inside the root as ``account``."""
        return [
            "chroot",
            f"--userspec={account.uid}:{account.gid}",
            str(self.path),
            "/usr/bin/env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "LANG=C.UTF-8",
            "HOME=/tmp",
            *argv,
        ]

    def run(
        self, account: Account, argv: Sequence[str], *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(account, argv),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def make_private_dir(self, path_in_root: str, owner: Account) -> Path:
        """Create a directory inside the root, owned by ``owner`` and closed to others."""
        host = self.host_path(path_in_root)
        # Never follow a symlink out of the root (trixie's /var/run points at the host's /run).
        if not host.resolve().is_relative_to(self.path.resolve()):
            raise StackUnavailableError(f"{path_in_root} resolves outside the Debian root")
        host.mkdir(parents=True, exist_ok=True)
        os.chown(host, owner.uid, owner.gid)
        host.chmod(0o700)
        return host


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise StackUnavailableError(
            "the embedded TimescaleDB needs root (debootstrap and chroot) when no Docker engine "
            "is available: run as root, start a Docker engine, or set DATABASE_URL and MQTT_URL "
            "to existing servers"
        )
    if not Path("/etc/debian_version").exists():
        raise StackUnavailableError(
            "the embedded TimescaleDB is built with debootstrap on Debian-family machines only: "
            "start a Docker engine, or set DATABASE_URL and MQTT_URL to existing servers"
        )
    if shutil.which("debootstrap") is None:
        raise StackUnavailableError(
            "debootstrap is not installed: run 'apt-get install -y debootstrap' "
            "(make demo and make test do this for you when run as root)"
        )


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise root builds between processes (pytest and 'db up' may race on a fresh machine)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_root(home: Path) -> DebianRoot:
    """Return the cached root, building it first if this machine has none yet."""
    roots = home / "roots"
    target = roots / f"{SUITE}-{recipe_digest()}"
    if target.exists():
        return DebianRoot(target)
    _check_prerequisites()
    with _exclusive(roots / ".build.lock"):
        if target.exists():
            return DebianRoot(target)
        partial = roots / f".partial-{target.name}"
        if partial.exists():
            shutil.rmtree(partial)
        log.info(
            "building Debian root (one-time, about a minute)",
            extra={"suite": SUITE, "packages": PACKAGES, "path": str(target)},
        )
        started = time.monotonic()
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(partial),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise StackUnavailableError(f"debootstrap of Debian {SUITE} failed:\n{tail}")
        # Build under a temporary name and rename last: an interrupted build is never used.
        partial.rename(target)
        log.info(
            "Debian root ready",
            extra={"path": str(target), "seconds": round(time.monotonic() - started, 1)},
        )
    return DebianRoot(target)
