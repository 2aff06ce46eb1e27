"""``rpmstore db up|down|status|url``: the embedded TimescaleDB + Mosquitto, or existing servers.

Three ways to get servers, chosen in this order:
1. ``DATABASE_URL`` and ``MQTT_URL`` set: existing servers, nothing is started.
2. A working Docker engine and the repository's docker-compose.yml: ``docker compose up``.
3. Root on a Debian-family machine: a cached Debian trixie root, servers started with chroot.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from psycopg.conninfo import make_conninfo

from rpmstore.db_transport import check_database_url
from rpmstore.localstack import docker, provision
from rpmstore.localstack.debian_root import DebianRoot, ensure_root
from rpmstore.localstack.errors import (
    DeviceCertificateError,
    StackNotRunningError,
    StackUnavailableError,
)
from rpmstore.localstack.model import (
    API_ROLE,
    DATABASE,
    OWNER_ROLE,
    Backend,
    ServerStatus,
    StackUrls,
)
from rpmstore.localstack.mosquitto import (
    GATEWAY_USER,
    INGEST_USER,
    BrokerTls,
    MosquittoInstance,
)
from rpmstore.localstack.pki import LocalCa, ensure_ca
from rpmstore.localstack.postgres import SUPERUSER, PostgresInstance, new_password
from rpmstore.settings import Settings
from schema.registry import broker_device_accounts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChrootState:
    """What must survive between ``db up`` calls: ports, the root in use and generated secrets."""

    root: str
    pg_port: int
    mqtt_port: int
    superuser_password: str
    owner_password: str
    mqtt_passwords: dict[str, str]
    # Empty in state files written before the API role existed; filled in by the next up.
    api_password: str = ""
    # Signs and verifies clinician tokens; empty in older state files, filled in by the next up.
    jwt_secret: str = ""
    # The broker's TLS listeners; 0 in state files written before TLS, filled in by the next up.
    mqtt_tls_port: int = 0
    mqtt_mtls_port: int = 0


def new_jwt_secret() -> str:
    """256 random bits: HS256 is only as strong as its key (RFC 7518 section 3.2)."""
    return secrets.token_urlsafe(32)


def jwt_secret(settings: Settings, local: StackUrls | None) -> str | None:
    """The clinician-token secret: ``RPMSTORE_JWT_SECRET``, else the local stack's.

    The stack's own secret only goes with the stack's own database: a process pointed at other
    servers (``DATABASE_URL``) belongs to their deployment and must be given its secret.
    """
    if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        return settings.jwt_secret.get_secret_value()
    if settings.database_url or local is None:
        return None
    return local.jwt_secret


def postgres_url(
    user: str, password: str, port: int, database: str, host: str = "127.0.0.1"
) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{credentials}@{host}:{port}/{quote(database, safe='')}"


def mqtt_url(user: str, password: str, port: int) -> str:
    """Plain MQTT: the embedded broker offers it on loopback only (ingest/transport.py)."""
    return f"mqtt://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}"


def mqtts_url(user: str, password: str, port: int, cafile: Path) -> str:
    """MQTT over TLS to the embedded broker, verified against the stack's own CA."""
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"mqtts://{credentials}@127.0.0.1:{port}?cafile={quote(str(cafile), safe='/')}"


# The stack's servers listen on loopback; their certificates name it as clients may write it.
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def pki_dir(settings: Settings) -> Path:
    """The stack's CAs, beside its state file; the servers get only their own certificates."""
    return settings.home / "instances" / f"{settings.instance}.pki"


def stack_cas(settings: Settings) -> tuple[LocalCa, LocalCa]:
    """The server CA (clients trust its ``ca.crt``) and the device CA (mutual TLS), created
    on first use. Two CAs: a server certificate must never pass as a device identity."""
    base = pki_dir(settings)
    server_ca = ensure_ca(base / "ca", f"rpmstore local CA ({settings.instance})")
    device_ca = ensure_ca(base / "device-ca", f"rpmstore device CA ({settings.instance})")
    # Re-signed on every use from the kept serials: a CRL past its next update makes OpenSSL
    # refuse every device certificate, and a stack may stay unused for longer than that.
    device_ca.write_crl(_revoked_serials(device_ca))
    return server_ca, device_ca


# A device certificate's common name is its broker username, substituted for %u in the ACL:
# nothing that could widen a topic (/, +, #) or confuse a log line.
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REVOKED = "revoked.txt"


def _revoked_serials(device_ca: LocalCa) -> list[int]:
    revoked_file = device_ca.directory / _REVOKED
    if not revoked_file.exists():
        return []
    return sorted({int(line) for line in revoked_file.read_text().split()})


def issue_device_certificate(settings: Settings, device_id: str, out_dir: Path, days: int) -> Path:
    """Issue a device certificate from the stack's device CA into ``out_dir``: ``<id>.crt``,
    ``<id>.key`` (0600) and the server CA's ``ca.crt`` the device verifies the broker with."""
    if not _DEVICE_NAME.match(device_id):
        raise DeviceCertificateError(f"{device_id!r} is not a device id (letters, digits, . _ -)")
    server_ca, device_ca = stack_cas(settings)
    now = datetime.now(UTC)
    issued = device_ca.issue_client(
        device_id, not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=days)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path = out_dir / f"{device_id}.crt"
    issued.write(cert_path, out_dir / f"{device_id}.key")
    (out_dir / "ca.crt").write_bytes(server_ca.cert_path.read_bytes())
    return cert_path


def revoke_device_certificate(settings: Settings, cert_file: Path) -> int:
    """Add a device certificate to the device CA's CRL and make a running embedded broker
    reload it (SIGHUP); returns its serial. Serials are kept, so the CRL only grows."""
    _, device_ca = stack_cas(settings)
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        cert.verify_directly_issued_by(device_ca.cert)  # the signature, not just the name
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise DeviceCertificateError(
            f"{cert_file} was not issued by this stack's device CA"
        ) from exc
    serials = sorted({*_revoked_serials(device_ca), cert.serial_number})
    (device_ca.directory / _REVOKED).write_text("".join(f"{serial}\n" for serial in serials))
    device_ca.write_crl(serials)
    state = _load_state(settings)
    if state is not None and choose_backend(settings) == "chroot":
        _, mosquitto = _chroot_servers(settings, state)
        if mosquitto.is_configured():
            mosquitto.install_device_crl(device_ca.crl_path.read_bytes())
    return cert.serial_number


def broker_tls(settings: Settings) -> BrokerTls:
    """A fresh server certificate for the embedded broker (re-issued on every up: cheap, and
    it never expires under a stack that is brought up now and then)."""
    server_ca, device_ca = stack_cas(settings)
    return BrokerTls(
        server=server_ca.issue_server("rpmstore-mosquitto", _LOOPBACK_NAMES),
        device_ca=device_ca.cert_path.read_bytes(),
        device_crl=device_ca.crl_path.read_bytes(),
    )


def choose_backend(settings: Settings) -> Backend:
    if settings.database_url and settings.mqtt_url:
        return "external"
    if settings.stack == "docker" or (settings.stack == "auto" and docker.engine_available()):
        return "docker"
    return "chroot"


def _state_path(settings: Settings) -> Path:
    return settings.home / "instances" / f"{settings.instance}.json"


def _load_state(settings: Settings) -> ChrootState | None:
    try:
        raw = json.loads(_state_path(settings).read_text())
    except FileNotFoundError:
        return None
    return ChrootState(**raw)


def _save_state(settings: Settings, state: ChrootState) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    # Owner-only permissions from the first byte: the file holds the generated passwords.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(state), handle, indent=2)
    temporary.replace(path)


def _chroot_servers(
    settings: Settings, state: ChrootState
) -> tuple[PostgresInstance, MosquittoInstance]:
    root = DebianRoot(Path(state.root))
    return (
        PostgresInstance(root, settings.instance, state.pg_port),
        MosquittoInstance(
            root,
            settings.instance,
            state.mqtt_port,
            tls_port=state.mqtt_tls_port or None,
            mtls_port=state.mqtt_mtls_port or None,
        ),
    )


def _chroot_urls(settings: Settings, state: ChrootState) -> StackUrls:
    cafile = pki_dir(settings) / "ca" / "ca.crt"

    def broker(user: str) -> str:
        password = state.mqtt_passwords[user]
        if state.mqtt_tls_port and cafile.exists():
            return mqtts_url(user, password, state.mqtt_tls_port, cafile)
        return mqtt_url(user, password, state.mqtt_port)  # a stack not yet up since TLS

    return StackUrls(
        database_url=postgres_url(OWNER_ROLE, state.owner_password, state.pg_port, DATABASE),
        admin_database_url=postgres_url(
            SUPERUSER, state.superuser_password, state.pg_port, DATABASE
        ),
        mqtt_url=broker(INGEST_USER),
        mqtt_gateway_url=broker(GATEWAY_USER),
        api_database_url=postgres_url(API_ROLE, state.api_password, state.pg_port, DATABASE)
        if state.api_password
        else None,
        jwt_secret=state.jwt_secret or None,
    )


def _chroot_up(settings: Settings) -> StackUrls:
    root = ensure_root(settings.home)
    state = _load_state(settings)
    if state is None or state.root != str(root.path):
        if state is not None:
            log.warning(
                "the Debian root recipe changed; the old root keeps its data: %s", state.root
            )
        state = ChrootState(
            root=str(root.path),
            pg_port=settings.pg_port,
            mqtt_port=settings.mqtt_port,
            superuser_password=new_password(),
            owner_password=new_password(),
            mqtt_passwords={INGEST_USER: new_password(), GATEWAY_USER: new_password()},
            api_password=new_password(),
            jwt_secret=new_jwt_secret(),
            mqtt_tls_port=settings.mqtt_tls_port,
            mqtt_mtls_port=settings.mqtt_mtls_port,
        )
        _save_state(settings, state)
    elif not (
        state.api_password and state.jwt_secret and state.mqtt_tls_port and state.mqtt_mtls_port
    ):
        state = replace(
            state,
            api_password=state.api_password or new_password(),
            jwt_secret=state.jwt_secret or new_jwt_secret(),
            mqtt_tls_port=state.mqtt_tls_port or settings.mqtt_tls_port,
            mqtt_mtls_port=state.mqtt_mtls_port or settings.mqtt_mtls_port,
        )
        _save_state(settings, state)
    postgres, mosquitto = _chroot_servers(settings, state)
    if not postgres.is_initialized():
        postgres.initialize(state.superuser_password)
    server_ca, _ = stack_cas(settings)
    postgres.configure_tls(server_ca.issue_server("rpmstore-postgres", _LOOPBACK_NAMES))
    postgres.start()
    # Provision first: the broker's device accounts are read from the application database.
    tls = broker_tls(settings)  # before the URLs: they name the CA file it creates
    stack_urls = _chroot_urls(settings, state)
    assert stack_urls.admin_database_url is not None
    provision_database(stack_urls.admin_database_url, state.owner_password, state.api_password)
    # Rewritten on every up: cheap, and it picks up a changed shipped broker policy.
    mosquitto.configure(state.mqtt_passwords, _device_accounts(stack_urls.database_url), tls)
    if mosquitto.is_running() and not mosquitto.listens_with_tls():
        mosquitto.stop()  # started before TLS: a reload (SIGHUP) adds no listener
    mosquitto.start()
    return stack_urls


def _device_accounts(database_url: str) -> list[tuple[str, str]]:
    """Device broker accounts, or none while the schema has not been migrated yet."""
    try:
        with psycopg.connect(database_url) as conn:
            return broker_device_accounts(conn)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return []


def sync_broker_devices(settings: Settings) -> int:
    """Give every active device its own broker account on the embedded Mosquitto (and remove
    those of suspended, retired or deleted devices); return how many devices have one."""
    if choose_backend(settings) != "chroot":
        raise StackUnavailableError(
            "rpmstore broker sync manages the embedded Mosquitto only; for another broker, "
            "install the lines of 'rpmstore broker passwd' in its password file"
        )
    state = _load_state(settings)
    if state is None:
        raise StackNotRunningError("the embedded stack is not set up: run 'rpmstore db up'")
    accounts = _device_accounts(_chroot_urls(settings, state).database_url)
    _, mosquitto = _chroot_servers(settings, state)
    mosquitto.set_device_accounts(state.mqtt_passwords, accounts)
    return len(accounts)


def provision_database(
    admin_database_url: str, owner_password: str, api_password: str | None
) -> None:
    """Login roles, application database and the TimescaleDB extension; all idempotent."""
    with psycopg.connect(
        make_conninfo(admin_database_url, dbname="postgres"), autocommit=True
    ) as admin:
        provision.ensure_login_role(admin, OWNER_ROLE, owner_password)
        if api_password:
            provision.ensure_login_role(admin, API_ROLE, api_password)
        provision.ensure_database(admin, DATABASE, OWNER_ROLE)
    with psycopg.connect(admin_database_url, autocommit=True) as admin_on_database:
        provision.ensure_timescaledb(admin_on_database)


def up(settings: Settings) -> StackUrls:
    """Start (or adopt) the servers and make sure the application database exists. Idempotent."""
    backend = choose_backend(settings)
    if backend == "external":
        log.info("using existing servers from DATABASE_URL and MQTT_URL; nothing to start")
        return urls(settings)
    if backend == "chroot":
        return _chroot_up(settings)
    stack_urls = docker.up(settings)
    assert stack_urls.admin_database_url is not None  # the compose file knows the superuser
    owner_password = psycopg.conninfo.conninfo_to_dict(stack_urls.database_url)["password"]
    api_password = (
        psycopg.conninfo.conninfo_to_dict(stack_urls.api_database_url).get("password")
        if stack_urls.api_database_url
        else None
    )
    provision_database(
        stack_urls.admin_database_url, str(owner_password), str(api_password or "") or None
    )
    return stack_urls


def down(settings: Settings) -> None:
    backend = choose_backend(settings)
    if backend == "external":
        log.info("DATABASE_URL and MQTT_URL point at existing servers; nothing to stop")
    elif backend == "docker":
        docker.down(settings)
    elif (state := _load_state(settings)) is not None:
        postgres, mosquitto = _chroot_servers(settings, state)
        mosquitto.stop()
        postgres.stop()


def local_urls(settings: Settings) -> StackUrls | None:
    if choose_backend(settings) == "docker":
        return docker.urls(settings)
    state = _load_state(settings)
    return _chroot_urls(settings, state) if state is not None else None


def urls(settings: Settings) -> StackUrls:
    """The URLs processes should use: explicit settings win over the local stack's."""
    local = local_urls(settings)
    allow = settings.database_allow_unverified
    for setting, explicit in (
        ("DATABASE_URL", settings.database_url),
        ("API_DATABASE_URL", settings.api_database_url),
    ):
        if explicit:
            check_database_url(explicit, allow_unverified=allow, setting=setting)
    database_url = settings.database_url or (local.database_url if local else None)
    broker_url = settings.mqtt_url or (local.mqtt_url if local else None)
    if database_url is None or broker_url is None:
        raise StackNotRunningError(
            "no database configured: run 'rpmstore db up' for the embedded stack, "
            "or set DATABASE_URL and MQTT_URL to existing servers"
        )
    return StackUrls(
        database_url=database_url,
        admin_database_url=local.admin_database_url if local else None,
        mqtt_url=broker_url,
        mqtt_gateway_url=local.mqtt_gateway_url if local else None,
        api_database_url=settings.api_database_url or (local.api_database_url if local else None),
        jwt_secret=jwt_secret(settings, local),
    )


def server_status(settings: Settings) -> ServerStatus:
    backend = choose_backend(settings)
    if backend == "docker":
        return docker.server_status(settings)
    if backend == "external":
        return ServerStatus(backend, postgres_running=True, mosquitto_running=None)
    state = _load_state(settings)
    if state is None:
        return ServerStatus(backend, postgres_running=False, mosquitto_running=False)
    postgres, mosquitto = _chroot_servers(settings, state)
    return ServerStatus(backend, postgres.is_running(), mosquitto.is_running())
