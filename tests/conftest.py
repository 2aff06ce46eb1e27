"""Real servers for the test suite.

PostgreSQL: ``RPMSTORE_TEST_ADMIN_DATABASE_URL`` (a superuser URL) reuses a running server;
otherwise the suite starts its own TimescaleDB cluster from the cached Debian root on a free
port and deletes it afterwards. Each test gets a fresh database cloned from a template that was
migrated once (``CREATE DATABASE ... TEMPLATE``), so tests never share data or clean up by DELETE.

Mosquitto: the suite starts its own broker with the shipped policy, on free ports: plain MQTT
(loopback), MQTT over TLS and mutual TLS, with certificates from a CA made for the session
(``rpmstore.localstack.pki``), so TLS is tested with real handshakes.

Clinician tokens: the suite is a deployment with its own JWT secret (``TEST_JWT_SECRET``, new
every run), set as ``RPMSTORE_JWT_SECRET`` for the whole session so that every ``rpmstore``
process a test starts verifies the tokens the tests sign.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rpmstore.localstack import provision
from rpmstore.localstack.debian_root import STATE_DIR_IN_ROOT, DebianRoot, ensure_root
from rpmstore.localstack.model import API_ROLE
from rpmstore.localstack.mosquitto import (
    GATEWAY_USER,
    INGEST_USER,
    BrokerTls,
    MosquittoInstance,
)
from rpmstore.localstack.pki import IssuedCertificate, LocalCa, ensure_ca
from rpmstore.localstack.postgres import SUPERUSER, PostgresInstance, new_password
from rpmstore.localstack.stack import mqtt_url, mqtts_url, postgres_url
from rpmstore.settings import Settings
from schema.migrate import Migrator
from tests.apphelpers import TEST_JWT_SECRET

TEST_OWNER = "rpmstore_test_owner"
# Cluster-wide, fixed name: migration 0006 grants to it (see rpmstore.localstack.model.API_ROLE).
TEST_API_ROLE = API_ROLE


@pytest.fixture(scope="session", autouse=True)
def jwt_secret_in_environment() -> Iterator[str]:
    """``RPMSTORE_JWT_SECRET`` for the session (see the module docstring)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RPMSTORE_JWT_SECRET", TEST_JWT_SECRET)
        yield TEST_JWT_SECRET


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may create databases on."""

    admin_url: str  # superuser, database "postgres"
    owner_password: str
    instance: PostgresInstance | None  # None when reusing an external server
    api_password: str = ""

    def url(self, database: str, *, admin: bool = False, api: bool = False) -> str:
        """A postgresql:// URL (both psycopg and asyncpg take it) for ``database``.

        The owner's by default; ``admin``: the superuser's; ``api``: the clinician API role's.
        """
        params = conninfo_to_dict(self.admin_url)
        if admin:
            user, password = str(params["user"]), str(params.get("password", ""))
        elif api:
            user, password = TEST_API_ROLE, self.api_password
        else:
            user, password = TEST_OWNER, self.owner_password
        return postgres_url(
            user, password, int(params.get("port") or 5432), database, str(params["host"])
        )

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)


_TEST_INSTANCE = re.compile(r"^pytest-(?:stack-)?(\d+)$")


def _remove_stale_test_instances(root: DebianRoot) -> None:
    """Servers and files left by test sessions that were killed before their teardown ran."""
    instances = root.host_path(f"{STATE_DIR_IN_ROOT}/instances")
    if not instances.is_dir():
        return
    for folder in instances.iterdir():
        match = _TEST_INSTANCE.match(folder.name)
        if match is None or Path(f"/proc/{match[1]}").exists():
            continue
        PostgresInstance(root, folder.name, 0).destroy()
        MosquittoInstance(root, folder.name, 0).destroy()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def debian_root() -> DebianRoot:
    root = ensure_root(Settings().home)
    _remove_stale_test_instances(root)
    return root


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    external = os.environ.get("RPMSTORE_TEST_ADMIN_DATABASE_URL")
    owner_password = new_password()
    if external:
        server = PgServer(make_conninfo(external, dbname="postgres"), owner_password, None)
        server = PgServer(server.url("postgres", admin=True), owner_password, None)
    else:
        root: DebianRoot = request.getfixturevalue("debian_root")
        superuser_password = new_password()
        instance = PostgresInstance(root, f"pytest-{os.getpid()}", free_port())
        instance.initialize(superuser_password)
        instance.start()
        admin_url = postgres_url(SUPERUSER, superuser_password, instance.port, "postgres")
        server = PgServer(admin_url, owner_password, instance)
    server = dataclasses.replace(server, api_password=new_password())
    with server.admin() as admin:
        provision.ensure_login_role(admin, TEST_OWNER, owner_password)
        provision.ensure_login_role(admin, TEST_API_ROLE, server.api_password)
    try:
        yield server
    finally:
        if server.instance is not None:
            server.instance.destroy()


def _create_template(server: PgServer, name: str, *, migrate: bool) -> str:
    with server.admin() as admin:
        provision.drop_database(admin, name)
        provision.ensure_database(admin, name, TEST_OWNER)
    with psycopg.connect(server.url(name, admin=True), autocommit=True) as admin_on_db:
        provision.ensure_timescaledb(admin_on_db)
    if migrate:
        with psycopg.connect(server.url(name), autocommit=True) as owner:
            Migrator(owner).up()
    with server.admin() as admin:
        provision.close_as_template(admin, name)
    return name


@pytest.fixture(scope="session")
def migrated_template(pg_server: PgServer) -> Iterator[str]:
    name = _create_template(pg_server, f"rpm_tmpl_migrated_{os.getpid()}", migrate=True)
    yield name
    _drop_template(pg_server, name)


@pytest.fixture(scope="session")
def empty_template(pg_server: PgServer) -> Iterator[str]:
    """A database with only the TimescaleDB extension: the starting point of migration tests."""
    name = _create_template(pg_server, f"rpm_tmpl_empty_{os.getpid()}", migrate=False)
    yield name
    _drop_template(pg_server, name)


def _drop_template(server: PgServer, name: str) -> None:
    with server.admin() as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(
                psycopg.sql.Identifier(name)
            )
        )
        provision.drop_database(admin, name)


@pytest.fixture
def database_factory(pg_server: PgServer) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_server)
    yield factory
    factory.drop_all()


class DatabaseFactory:
    """Clones template databases for one test and drops them afterwards."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self._created: list[str] = []

    def clone(self, template: str) -> str:
        """A fresh database cloned from ``template``; returns the owner's URL."""
        name = f"rpm_test_{uuid.uuid4().hex[:12]}"
        with self.server.admin() as admin:
            provision.clone_database(admin, template=template, database=name, owner=TEST_OWNER)
        self._created.append(name)
        return self.server.url(name)

    def drop_all(self) -> None:
        with self.server.admin() as admin:
            for name in self._created:
                provision.drop_database(admin, name)


@pytest.fixture
def db_url(database_factory: DatabaseFactory, migrated_template: str) -> str:
    """Owner URL of a fresh, fully migrated database."""
    return database_factory.clone(migrated_template)


@pytest.fixture
def api_db_url(db_url: str, database_factory: DatabaseFactory) -> str:
    """The clinician API role's URL for the same database as ``db_url``."""
    return database_factory.server.url(str(conninfo_to_dict(db_url)["dbname"]), api=True)


@pytest.fixture
def empty_db_url(database_factory: DatabaseFactory, empty_template: str) -> str:
    """Owner URL of a fresh database with TimescaleDB and no rpmstore schema."""
    return database_factory.clone(empty_template)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@dataclass(frozen=True)
class TestPki:
    """The session's CAs: ``server_ca`` signs the servers' certificates (clients trust its
    ``ca.crt``), ``device_ca`` the devices' (mutual TLS)."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    server_ca: LocalCa
    device_ca: LocalCa
    # Issued to "device-revoked" and listed in the device CA's CRL before the broker starts.
    revoked_device: IssuedCertificate


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    base = tmp_path_factory.mktemp("pki")
    device_ca = ensure_ca(base / "device-ca", "rpmstore test device CA")
    revoked = device_ca.issue_client("device-revoked")
    device_ca.write_crl([revoked.serial])
    return TestPki(ensure_ca(base / "ca", "rpmstore test CA"), device_ca, revoked)


@dataclass(frozen=True)
class Broker:
    instance: MosquittoInstance
    passwords: dict[str, str]
    pki: TestPki

    def url(self, user: str) -> str:
        """MQTT over TLS, verified against the session CA: how rpmstore connects."""
        assert self.instance.tls_port is not None
        return mqtts_url(
            user, self.passwords[user], self.instance.tls_port, self.pki.server_ca.cert_path
        )

    def plain_url(self, user: str) -> str:
        return mqtt_url(user, self.passwords[user], self.instance.port)


@pytest.fixture(scope="session")
def mqtt_broker(debian_root: DebianRoot, test_pki: TestPki) -> Iterator[Broker]:
    """A Mosquitto broker with the shipped ACL and limits, plus two device accounts."""
    passwords = {
        INGEST_USER: new_password(),
        GATEWAY_USER: new_password(),
        "device-a": secrets.token_urlsafe(16),
        "device-b": secrets.token_urlsafe(16),
    }
    instance = MosquittoInstance(
        debian_root,
        f"pytest-{os.getpid()}",
        free_port(),
        tls_port=free_port(),
        mtls_port=free_port(),
    )
    tls = BrokerTls(
        server=test_pki.server_ca.issue_server("mosquitto", ["localhost", "127.0.0.1"]),
        device_ca=test_pki.device_ca.cert_path.read_bytes(),
        device_crl=test_pki.device_ca.crl_path.read_bytes(),
    )
    instance.configure(passwords, tls=tls)
    instance.start()
    try:
        yield Broker(instance, passwords, test_pki)
    finally:
        instance.destroy()
