"""Static checks of docker-compose.yml and deploy/: what can be verified without a Docker engine."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from rpmstore.localstack.docker import SECRET_NAMES, SERVER_SERVICES

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
MOSQUITTO_CONF = REPO / "deploy" / "mosquitto" / "mosquitto.conf"
MOSQUITTO_ENTRYPOINT = REPO / "deploy" / "mosquitto" / "entrypoint.sh"
BROKER_POLICY = REPO / "ingest" / "broker"
ACL_FILE = BROKER_POLICY / "acl"
LIMITS_FILE = BROKER_POLICY / "limits.conf"

EXPECTED_SERVICES = {"timescaledb", "mosquitto", "migrate", "api", "ingest-mqtt"}
APP_SUBCOMMANDS = {
    "migrate": ["migrate", "up"],
    "api": ["serve"],
    "ingest-mqtt": ["ingest", "mqtt"],
}
APP_IMAGE = "rpmstore:local"
SERVICE_ACCOUNTS = {"rpmstore-ingest", "rpmstore-gateway"}
DEVICE_WRITE_RULE = ("pattern", "write", "rpm/v1/devices/%u/readings")
PLACEHOLDER = "change-me"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
INITDB_DIR = PurePosixPath("/docker-entrypoint-initdb.d")
# The timescaledb image's own init scripts; ours must sort after them.
IMAGE_INIT_SCRIPTS = ("000_install_timescaledb.sh", "001_timescaledb_tune.sh")

# `$$` is compose's escape for a literal `$` (expanded later, inside the container).
_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:@/]+:(?P<password>[^@]*)@")


@dataclass(frozen=True)
class Reference:
    """One `${NAME...}` interpolation in the compose file; `op` is `:-`, `?`, ... or None."""

    name: str
    op: str | None


@dataclass(frozen=True)
class Mount:
    """A service volume, normalised from the short or the long syntax."""

    source: str
    target: PurePosixPath
    read_only: bool

    @property
    def is_repo_bind(self) -> bool:
        return self.source.startswith(("./", "../")) or self.source == "."

    def host_path(self) -> Path:
        return (REPO / self.source).resolve()


@dataclass(frozen=True)
class AclRule:
    user: str | None  # None: before any `user` line (anonymous) or a `pattern` (every client)
    kind: str
    access: str
    topic: str


def _mapping(value: object) -> dict[str, Any]:
    assert isinstance(value, dict), f"expected a mapping, got {value!r}"
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _mapping(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: _mapping(spec) for name, spec in _mapping(compose["services"]).items()}


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _references(text: str) -> Iterator[Reference]:
    for match in _INTERPOLATION.finditer(text):
        if match["bare"] is not None:
            yield Reference(match["bare"], None)
        elif match["braced"] is not None:
            braced = _BRACED.fullmatch(match["braced"])
            assert braced is not None, f"unparsable interpolation {match[0]!r}"
            yield Reference(braced["name"], braced["op"])


def _all_references(compose: dict[str, Any]) -> list[Reference]:
    return [ref for text in _strings(compose) for ref in _references(text)]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env)
    return {str(key): str(value) for key, value in _mapping(env).items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            read_only = "ro" in ",".join(options).split(",")
        else:
            spec = _mapping(volume)
            source, target = str(spec["source"]), str(spec["target"])
            read_only = bool(spec.get("read_only", False))
        mounts.append(Mount(source, PurePosixPath(target), read_only))
    return mounts


def _container_to_host(path: PurePosixPath, mounts: list[Mount]) -> Path | None:
    """Where a container path comes from in the repository, or None when it is not bound."""
    covering = [m for m in mounts if m.target == path or m.target in path.parents]
    if not covering:
        return None
    mount = max(covering, key=lambda m: len(m.target.parts))
    if not mount.is_repo_bind:
        return None
    return mount.host_path().joinpath(*path.relative_to(mount.target).parts)


def _conf_files_in(folder: PurePosixPath, mounts: list[Mount]) -> set[Path]:
    """The host files a mosquitto `include_dir folder` would load (it reads `*.conf` only)."""
    files = {
        m.host_path()
        for m in mounts
        if m.is_repo_bind and m.target.parent == folder and m.target.suffix == ".conf"
    }
    whole = _container_to_host(folder, [m for m in mounts if m.target.parent != folder])
    if whole is not None and whole.is_dir():
        files |= {path.resolve() for path in whole.glob("*.conf")}
    return files


def _mosquitto_options(path: Path) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.setdefault(key, []).append(value.strip())
    return options


def _acl_rules(path: Path) -> list[AclRule]:
    rules, user = [], None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        if kind == "user":
            user = rest.strip()
            continue
        access, _, topic = rest.strip().partition(" ")
        if access not in {"read", "write", "readwrite", "deny"}:
            access, topic = "readwrite", rest.strip()  # the access word is optional
        rules.append(AclRule(None if kind == "pattern" else user, kind, access, topic.strip()))
    return rules


def _env_example() -> dict[str, str]:
    values = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _is_secret(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def test_compose_has_expected_services_and_no_version_key(compose: dict[str, Any]) -> None:
    """Every service of the stack is defined; the obsolete top-level `version` is not."""
    assert set(_mapping(compose["services"])) >= EXPECTED_SERVICES
    assert "version" not in compose


@pytest.mark.parametrize(
    ("service", "pattern"),
    [
        ("timescaledb", r"timescale/timescaledb:2\.\d+\.\d+-pg17"),
        ("mosquitto", r"eclipse-mosquitto:2\.0\.\d+"),
    ],
)
def test_server_images_are_pinned(
    services: dict[str, dict[str, Any]], service: str, pattern: str
) -> None:
    """Server images name an exact release (TimescaleDB 2.x on PostgreSQL 17), never `latest`."""
    image = str(services[service]["image"])
    assert re.fullmatch(pattern, image), image
    assert "latest" not in image


def test_app_services_share_the_project_image(services: dict[str, dict[str, Any]]) -> None:
    """migrate, api and ingest-mqtt run one image built from the repository root."""
    for name in APP_SUBCOMMANDS:
        service = services[name]
        assert service["image"] == APP_IMAGE
        build = _mapping(service["build"])
        assert (REPO / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE.resolve()


@pytest.mark.parametrize(("service", "subcommand"), APP_SUBCOMMANDS.items())
def test_app_commands_are_rpmstore_subcommands(
    services: dict[str, dict[str, Any]], service: str, subcommand: list[str]
) -> None:
    """Each app service runs `rpmstore <subcommand>` in full (the image has no ENTRYPOINT)."""
    command = _command(services[service])
    assert command[0] == "rpmstore"
    assert command[1 : 1 + len(subcommand)] == subcommand
    assert "entrypoint" not in services[service]


def test_every_dependency_states_a_condition(services: dict[str, dict[str, Any]]) -> None:
    """depends_on uses the long form with a condition, so start order means readiness."""
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must be a mapping"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert _mapping(spec).get("condition") in CONDITIONS, f"{name} -> {target}"


def test_awaited_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    """Anything waited on as healthy, or by `rpmstore db up --wait`, defines a healthcheck."""
    awaited = set(SERVER_SERVICES)
    for service in services.values():
        for target, spec in service.get("depends_on", {}).items():
            if _mapping(spec)["condition"] == "service_healthy":
                awaited.add(target)
    for name in awaited:
        healthcheck = _mapping(services[name].get("healthcheck", {}))
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable", False), name


@pytest.mark.parametrize(
    ("service", "probe"),
    [("timescaledb", "pg_isready"), ("mosquitto", "mosquitto_sub"), ("api", "/healthz")],
)
def test_healthchecks_probe_the_service(
    services: dict[str, dict[str, Any]], service: str, probe: str
) -> None:
    """Healthchecks talk to the server itself rather than checking that a process exists."""
    assert probe in " ".join(map(str, services[service]["healthcheck"]["test"]))


def test_migrations_run_once_before_the_app(services: dict[str, dict[str, Any]]) -> None:
    """migrate is one-shot and api/ingest-mqtt start only after it exited successfully."""
    # Quoted in YAML on purpose: a bare `no` would load as False.
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "ingest-mqtt"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
    assert services["ingest-mqtt"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_published_ports_bind_loopback(services: dict[str, dict[str, Any]]) -> None:
    """No port is published beyond 127.0.0.1: these are development servers with patient data."""
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_secrets_have_no_literal_values(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Passwords come only from the environment: no defaults, no literals, even in URLs."""
    for ref in _all_references(compose):
        if _is_secret(ref.name):
            assert ref.op in {None, "?", ":?"}, f"${{{ref.name}}} has a default ({ref.op})"
    for name, service in services.items():
        for key, value in _environment(service).items():
            url = _URL_PASSWORD.match(value)
            secret = url["password"] if url else value if _is_secret(key) else None
            if secret is not None:
                refs = list(_references(secret))
                assert refs, f"{name}: {key} holds a literal secret"
                assert _INTERPOLATION.sub("", secret) == "", f"{name}: {key} mixes in a literal"


def test_only_the_clinician_api_holds_the_token_secret(
    services: dict[str, dict[str, Any]],
) -> None:
    """The api service must be given RPMSTORE_JWT_SECRET (serve refuses to start without it);
    the device-ingest service verifies no clinician token, so it holds no secret to leak."""
    assert "RPMSTORE_JWT_SECRET" in _environment(services["api"])
    holders = {n for n, svc in services.items() if "RPMSTORE_JWT_SECRET" in _environment(svc)}
    assert holders == {"api"}


def test_env_example_covers_every_compose_variable(compose: dict[str, Any]) -> None:
    """.env.example lists every variable compose reads, with placeholder secrets only."""
    example = _env_example()
    missing = {ref.name for ref in _all_references(compose)} - set(example)
    assert not missing, f"not in .env.example: {sorted(missing)}"
    for key, value in example.items():
        if _is_secret(key):
            assert value == PLACEHOLDER, f"{key} in .env.example must stay {PLACEHOLDER!r}"


def test_db_up_writes_every_required_variable(compose: dict[str, Any]) -> None:
    """The .env that `rpmstore db up` generates satisfies every `${VAR:?...}` of compose."""
    required = {ref.name for ref in _all_references(compose) if ref.op in {"?", ":?"}}
    assert required <= set(SECRET_NAMES), sorted(required - set(SECRET_NAMES))


def test_repository_mounts_exist_and_are_read_only(services: dict[str, dict[str, Any]]) -> None:
    """Every ./path a service mounts exists in the checkout and is mounted read-only."""
    for name, service in services.items():
        for mount in _mounts(service):
            if mount.is_repo_bind:
                assert mount.host_path().exists(), f"{name}: {mount.source} does not exist"
                assert mount.read_only, f"{name}: {mount.source} must be mounted :ro"


def test_timescaledb_init_script_runs_after_the_images_own(
    services: dict[str, dict[str, Any]],
) -> None:
    """The init script is bound as one file, so the image's own init scripts stay and run first."""
    service = services["timescaledb"]
    scripts = [m for m in _mounts(service) if INITDB_DIR in (m.target, *m.target.parents)]
    assert scripts, "no init script mounted into /docker-entrypoint-initdb.d"
    for mount in scripts:
        assert mount.target.parent == INITDB_DIR, "mounting the folder hides the image's scripts"
        assert mount.host_path().is_file()
        assert mount.target.name > max(IMAGE_INIT_SCRIPTS)
    assert "RPMSTORE_DB_PASSWORD" in _environment(service)
    assert _environment(service).get("POSTGRES_DB") == "rpmstore"


def test_timescaledb_init_script_binds_the_password() -> None:
    """The owner's password reaches SQL as a psql variable, never spliced in by the shell."""
    script = (REPO / "deploy" / "timescaledb" / "010_rpmstore_owner.sh").read_text()
    heredoc = re.search(r"<<-?\s*'(?P<tag>\w+)'\n(?P<body>.*?)\n(?P=tag)\n", script, re.DOTALL)
    assert heredoc is not None, "SQL must come from a quoted heredoc (no shell expansion)"
    body = heredoc["body"]
    assert "PASSWORD :'pw'" in body
    assert "$" not in body
    assert 'pw="$RPMSTORE_DB_PASSWORD"' in script
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in body


def test_timescaledb_keeps_durability_defaults(services: dict[str, dict[str, Any]]) -> None:
    """Server flags keep commits durable (ingest acks after COMMIT) and turn telemetry off."""
    command = _command(services["timescaledb"])
    assert command[0] == "postgres"
    settings = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-c")
    assert settings.get("synchronous_commit") == "on"
    assert settings.get("timescaledb.telemetry_level") == "off"
    for unsafe in ("fsync", "full_page_writes"):
        assert settings.get(unsafe, "on") == "on"


def test_mosquitto_config_comes_from_the_shared_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    """acl_file is ingest/broker/acl and include_dir loads ingest/broker/limits.conf alone."""
    mounts = _mounts(services["mosquitto"])
    assert any(m.host_path() == BROKER_POLICY.resolve() for m in mounts if m.is_repo_bind)
    main = _container_to_host(PurePosixPath("/mosquitto/config/mosquitto.conf"), mounts)
    assert main == MOSQUITTO_CONF.resolve()

    options = _mosquitto_options(MOSQUITTO_CONF)
    (acl,) = options["acl_file"]
    assert _container_to_host(PurePosixPath(acl), mounts) == ACL_FILE.resolve()
    included = {
        conf
        for folder in options["include_dir"]
        for conf in _conf_files_in(PurePosixPath(folder), mounts)
    }
    assert included == {LIMITS_FILE.resolve()}


def test_mosquitto_config_sets_credentials_and_storage(
    services: dict[str, dict[str, Any]],
) -> None:
    """The main config listens on 1883, authenticates from a generated file and persists."""
    mounts = _mounts(services["mosquitto"])
    options = _mosquitto_options(MOSQUITTO_CONF)
    assert options["listener"] == ["1883"]
    (password_file,) = options["password_file"]
    # Generated at start from the environment, so it must not be a file from the repository.
    assert _container_to_host(PurePosixPath(password_file), mounts) is None
    entrypoint = MOSQUITTO_ENTRYPOINT.read_text()
    assert f"passwd_file={password_file}\n" in entrypoint
    (data,) = options["persistence_location"]
    volumes = [m for m in mounts if not m.is_repo_bind]
    assert any(m.target == PurePosixPath(data) for m in volumes), "broker data is not persisted"


def test_mosquitto_entrypoint_creates_service_accounts(
    services: dict[str, dict[str, Any]],
) -> None:
    """The broker starts from our entrypoint, which writes both accounts, then execs mosquitto."""
    service = services["mosquitto"]
    entrypoint = [str(part) for part in service["entrypoint"]]
    script = PurePosixPath(entrypoint[-1])
    assert _container_to_host(script, _mounts(service)) == MOSQUITTO_ENTRYPOINT.resolve()
    text = MOSQUITTO_ENTRYPOINT.read_text()
    for account, variable in (
        ("rpmstore-ingest", "MQTT_INGEST_PASSWORD"),
        ("rpmstore-gateway", "MQTT_GATEWAY_PASSWORD"),
    ):
        assert re.search(rf"mosquitto_passwd .*-b .* {account} \"\${variable}\"", text), account
        assert variable in _environment(service)
    assert "exec /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf" in text


def test_acl_lets_a_device_write_only_its_own_topic() -> None:
    """Devices (every account but the two service accounts) get no wildcard topics."""
    rules = _acl_rules(ACL_FILE)
    assert DEVICE_WRITE_RULE in {(r.kind, r.access, r.topic) for r in rules}
    for rule in rules:
        if rule.kind == "pattern":
            assert "%u" in rule.topic or "%c" in rule.topic, rule
        if rule.kind == "pattern" or rule.user not in SERVICE_ACCOUNTS:
            assert not {"#", "+"} & set(rule.topic.split("/")), f"wildcard for devices: {rule}"
    assert all(r.user is not None for r in rules if r.kind == "topic"), "anonymous topic rules"


def test_dockerfile_builds_a_non_root_image_of_every_package() -> None:
    """The image is pinned, installs every packaged folder, runs unprivileged, no ENTRYPOINT."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim-bookworm"
    assert not any(line.startswith("ENTRYPOINT") for line in instructions)
    assert any(line.startswith("ENV PYTHONUNBUFFERED=1") for line in instructions)
    users = [line.split()[1].split(":")[0] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}

    copied = {line.split()[1] for line in instructions if line.startswith("COPY ")}
    for source in copied:
        assert (REPO / source).exists(), source
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert set(packages) | {"pyproject.toml", "README.md"} <= copied


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    """.env, the git history and the virtualenv never enter the build context."""
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv"} <= ignored


def test_tls_override_adds_the_embedded_stacks_tls_listeners(
    services: dict[str, dict[str, Any]],
) -> None:
    """deploy/compose.tls.yml mounts deploy/mosquitto/tls.conf where include_dir loads it,
    with the certificates it names, and publishes its ports on loopback by default."""
    override = _mapping(yaml.safe_load((REPO / "deploy" / "compose.tls.yml").read_text()))
    broker = _mapping(_mapping(override["services"])["mosquitto"])
    mounts = _mounts(services["mosquitto"]) + _mounts(broker)
    tls_conf = REPO / "deploy" / "mosquitto" / "tls.conf"
    (include_dir,) = _mosquitto_options(MOSQUITTO_CONF)["include_dir"]
    assert _conf_files_in(PurePosixPath(include_dir), mounts) == {
        LIMITS_FILE.resolve(),
        tls_conf.resolve(),
    }
    options = _mosquitto_options(tls_conf)
    assert options["listener"] == ["8883", "8884"]
    assert options["tls_version"] == ["tlsv1.2", "tlsv1.2"]
    assert options["require_certificate"] == ["true"]
    assert options["use_identity_as_username"] == ["true"]
    tls_mount = next(m for m in _mounts(broker) if m.target == PurePosixPath("/mosquitto/tls"))
    assert tls_mount.read_only
    for name in ("certfile", "keyfile", "cafile", "crlfile"):
        for path in options[name]:
            assert PurePosixPath(path).parent == tls_mount.target
    for port in broker["ports"]:
        assert str(port).startswith("${RPMSTORE_MQTTS_BIND:-127.0.0.1}:")
