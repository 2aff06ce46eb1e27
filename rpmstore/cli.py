"""The ``rpmstore`` command: the composition root that builds settings and wires the parts."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Callable, Sequence

import psycopg

from api.auth import InsecureAuthConfigError
from ingest.alerting import cli as alerts_cli
from retention.commands import add_commands as add_retention_commands
from retention.rechunk.commands import add_commands as add_rechunk_commands
from rpmstore.clinician_demo import TokenSigner
from rpmstore.localstack import stack
from rpmstore.localstack.errors import StackNotRunningError, StackUnavailableError
from rpmstore.logs import configure_logging
from rpmstore.settings import Settings
from schema.edition import TimescaleMissingError, detect_edition
from schema.migrate import MigrationError, Migrator
from schema.registry import broker_device_accounts
from schema.rollups import add_commands as add_rollup_commands

# Errors a user can act on: printed as one line, exit status 2, no traceback.
_USER_ERRORS = (
    StackUnavailableError,
    StackNotRunningError,
    MigrationError,
    TimescaleMissingError,
    psycopg.OperationalError,
    InsecureAuthConfigError,
)


def _database_url(settings: Settings) -> str:
    return stack.urls(settings).database_url


def _db_up(settings: Settings, _args: argparse.Namespace) -> int:
    urls = stack.up(settings)
    print(
        f"up ({stack.choose_backend(settings)}): DATABASE_URL and MQTT_URL from 'rpmstore db url'"
    )
    with psycopg.connect(urls.database_url) as conn:
        edition = detect_edition(conn)
    print(
        f"PostgreSQL {edition.postgres_version}, TimescaleDB {edition.timescaledb_version} "
        f"({edition.license} edition)"
    )
    return 0


def _db_down(settings: Settings, _args: argparse.Namespace) -> int:
    stack.down(settings)
    print("down")
    return 0


def _db_status(settings: Settings, _args: argparse.Namespace) -> int:
    servers = stack.server_status(settings)
    print(f"backend:     {servers.backend}")
    print(f"postgres:    {'running' if servers.postgres_running else 'stopped'}")
    if servers.mosquitto_running is not None:
        print(f"mosquitto:   {'running' if servers.mosquitto_running else 'stopped'}")
    if not servers.postgres_running:
        return 1
    with psycopg.connect(_database_url(settings), connect_timeout=10) as conn:
        edition = detect_edition(conn)
    print(f"PostgreSQL:  {edition.postgres_version}")
    print(f"TimescaleDB: {edition.timescaledb_version}")
    print(f"edition:     {edition.license}")
    return 0


def _db_url(settings: Settings, args: argparse.Namespace) -> int:
    urls = stack.urls(settings)
    prefix = "export " if args.export else ""
    pairs = {
        "DATABASE_URL": urls.database_url,
        "API_DATABASE_URL": urls.api_database_url,
        "ADMIN_DATABASE_URL": urls.admin_database_url,
        "MQTT_URL": urls.mqtt_url,
        "MQTT_GATEWAY_URL": urls.mqtt_gateway_url,
    }
    for name, value in pairs.items():
        if value is not None:
            print(f"{prefix}{name}='{value}'")
    return 0


def _migrator(settings: Settings, conn: psycopg.Connection) -> Migrator:
    return Migrator(conn, lock_timeout_s=settings.migrate_lock_timeout_s)


def _migrate_status(settings: Settings, _args: argparse.Namespace) -> int:
    with psycopg.connect(_database_url(settings), autocommit=True) as conn:
        states = _migrator(settings, conn).status()
    for state in states:
        applied = f"  applied {state.applied_at:%Y-%m-%d %H:%M:%S%z}" if state.applied_at else ""
        print(f"{state.version:04d}_{state.name:<30} {state.status}{applied}")
    return 0 if all(s.status in ("applied", "pending") for s in states) else 1


def _migrate_up(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(_database_url(settings), autocommit=True) as conn:
        applied = _migrator(settings, conn).up(target=args.to)
    print("\n".join(f"applied {m.label}" for m in applied) or "schema is up to date")
    return 0


def _migrate_down(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(_database_url(settings), autocommit=True) as conn:
        reverted = _migrator(settings, conn).down(args.steps)
    print("\n".join(f"reverted {m.label}" for m in reverted) or "nothing to revert")
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import os

    import uvicorn  # imported here: only this command needs the server

    from api.app import create_app
    from rpmstore.asgi import app_settings

    role = args.role or settings.serve_role
    if args.workers > 1:
        # Separate processes (one group committer each) use more than one core for decoding
        # and validation; they find the database the same way this process does.
        app_settings(settings, role)  # fail here, once, if there is no database or no safe auth
        # The workers read their settings from the environment they inherit.
        os.environ["RPMSTORE_SERVE_ROLE"] = role
        uvicorn.run(
            "rpmstore.asgi:app",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
        )
        return 0
    app = create_app(**app_settings(settings, role))
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def _broker_sync(settings: Settings, _args: argparse.Namespace) -> int:
    devices = stack.sync_broker_devices(settings)
    print(f"broker accounts: {devices} active devices (service accounts kept)")
    return 0


def _broker_passwd(settings: Settings, _args: argparse.Namespace) -> int:
    with psycopg.connect(_database_url(settings)) as conn:
        for device_id, password_hash in broker_device_accounts(conn):
            print(f"{device_id}:{password_hash}")
    return 0


def token_signer(settings: Settings, *, lifetime_s: int = 3600) -> TokenSigner | None:
    """Signs tokens with the API's own HS256 secret (None with an IdP's key pair)."""
    from api.auth import issue_token
    from rpmstore.asgi import auth_config

    config = auth_config(settings)
    if config.algorithm != "HS256":
        return None
    secret = settings.jwt_secret.get_secret_value()

    def sign(subject: str, roles: list[str], teams: list[uuid.UUID]) -> str:
        return issue_token(
            config, secret, subject=subject, roles=roles, care_teams=teams, lifetime_s=lifetime_s
        )

    return sign


def _token(settings: Settings, args: argparse.Namespace) -> int:
    sign = token_signer(settings, lifetime_s=args.lifetime)
    if sign is None:
        raise InsecureAuthConfigError(
            f"tokens signed with {settings.jwt_algorithm} come from your identity provider"
        )
    print(sign(args.subject, args.role, args.care_team))
    return 0


def _ingest_mqtt(settings: Settings, args: argparse.Namespace) -> int:
    from rpmstore.ingest_process import run_mqtt_ingestor

    urls = stack.urls(settings)
    return run_mqtt_ingestor(
        settings, database_url=urls.database_url, mqtt_url=urls.mqtt_url, retire=args.retire
    )


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    if args.basic:
        from rpmstore.demo import run_demo

        run_demo(_database_url(settings))
        return 0
    from rpmstore.simulate_send import SendError
    from rpmstore.ward_demo import DemoError, DemoOptions, run_ward_demo

    _quiet_http_client_logs()

    options = DemoOptions(
        patients=args.patients, rate=args.rate, seconds=args.seconds, seed=args.seed
    )
    try:
        return run_ward_demo(stack.urls(settings), options, token_signer(settings))
    except (DemoError, SendError) as exc:
        print(f"rpmstore: error: {exc}", file=sys.stderr)
        return 2


def _quiet_http_client_logs() -> None:
    """The simulator sends hundreds of requests a second; httpx2 logs each one at INFO."""
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from rpmstore.simulate import Endpoints, SimulationConfig, format_report, run_simulation
    from rpmstore.simulate_send import SendError
    from rpmstore.simulate_ward import Shares

    _quiet_http_client_logs()
    urls = stack.urls(settings)
    mqtt_url = args.mqtt_url or urls.mqtt_gateway_url
    if args.via == "mqtt" and mqtt_url is None:
        print(
            "rpmstore: error: --via mqtt needs --mqtt-url (an account that may publish for "
            "every device) when the servers are not the local stack",
            file=sys.stderr,
        )
        return 2
    config = SimulationConfig(
        patients=args.patients,
        rate=args.rate,
        seconds=args.seconds,
        via=args.via,
        seed=args.seed,
        shares=Shares(retry=args.retry_share, late=args.late_share, bad=args.bad_share),
        concurrency=args.concurrency,
        wait_s=args.wait,
    )
    endpoints = Endpoints(urls.database_url, api_url=args.api_url, mqtt_url=mqtt_url)
    try:
        report = run_simulation(config, endpoints)
    except SendError as exc:
        print(f"rpmstore: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_report(report)))
    return 0 if report.accounted else 1


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def _add_simulate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="a simulated ward sending vitals over HTTP or MQTT; reports what was stored",
    )
    simulate.add_argument("--patients", type=_count, default=5, metavar="N")
    simulate.add_argument(
        "--rate", type=_positive, default=100.0, metavar="R", help="readings per second in total"
    )
    simulate.add_argument("--seconds", type=_positive, default=10.0, metavar="S")
    simulate.add_argument("--via", choices=("http", "mqtt"), default="http")
    simulate.add_argument(
        "--api-url", default="http://127.0.0.1:8000", metavar="URL", help="for --via http"
    )
    simulate.add_argument(
        "--mqtt-url",
        default=None,
        metavar="URL",
        help="for --via mqtt: an account that may publish for every device "
        "(default: the local stack's MQTT_GATEWAY_URL)",
    )
    simulate.add_argument(
        "--seed", type=int, default=None, metavar="K", help="default: a fresh one, reported"
    )
    simulate.add_argument(
        "--retry-share", type=_share, default=0.03, metavar="F", help="exact re-sends (0.03)"
    )
    simulate.add_argument(
        "--late-share", type=_share, default=0.05, metavar="F", help="measured up to 55 min ago"
    )
    simulate.add_argument(
        "--bad-share", type=_share, default=0.02, metavar="F", help="payloads ingest must refuse"
    )
    simulate.add_argument(
        "--concurrency", type=_count, default=32, metavar="N", help="HTTP requests in flight"
    )
    simulate.add_argument(
        "--wait", type=_positive, default=30.0, metavar="S", help="bound on waiting for ingest"
    )
    simulate.set_defaults(handler=_simulate)


def _add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="a simulated ward through the real ingestor and API: stored, duplicates, quarantined",
    )
    demo.add_argument(
        "--basic",
        action="store_true",
        help="instead: register one patient, store an hour of readings, read them back",
    )
    demo.add_argument("--patients", type=_count, default=5, metavar="N")
    demo.add_argument("--rate", type=_positive, default=200.0, metavar="R")
    demo.add_argument("--seconds", type=_positive, default=5.0, metavar="S", help="per transport")
    demo.add_argument("--seed", type=int, default=None, metavar="K")
    demo.set_defaults(handler=_demo)


Handler = Callable[[Settings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpmstore", description="Remote patient monitoring store on TimescaleDB."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="the embedded TimescaleDB + Mosquitto stack")
    db_actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    db_actions.add_parser("up", help="start (building on first use); idempotent").set_defaults(
        handler=_db_up
    )
    db_actions.add_parser("down", help="stop both servers").set_defaults(handler=_db_down)
    db_actions.add_parser("status", help="servers, versions and edition").set_defaults(
        handler=_db_status
    )
    url = db_actions.add_parser("url", help="print the connection URLs (they hold passwords)")
    url.add_argument("--export", action="store_true", help="prefix lines with 'export'")
    url.set_defaults(handler=_db_url)

    migrate = commands.add_parser("migrate", help="schema migrations")
    migrate_actions = migrate.add_subparsers(dest="action", metavar="ACTION")
    migrate.set_defaults(handler=_migrate_status)
    migrate_actions.add_parser("status", help="applied and pending migrations").set_defaults(
        handler=_migrate_status
    )
    up = migrate_actions.add_parser("up", help="apply pending migrations")
    up.add_argument("--to", type=int, default=None, metavar="VERSION", help="stop at VERSION")
    up.set_defaults(handler=_migrate_up)
    down = migrate_actions.add_parser("down", help="revert the newest N migrations")
    down.add_argument("steps", type=int, metavar="N")
    down.set_defaults(handler=_migrate_down)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument(
        "--role",
        choices=("all", "ingest", "api"),
        default=None,
        help="routes to serve: all (default; RPMSTORE_SERVE_ROLE), ingest (device POST "
        "/v1/readings only) or api (clinician, admin, audit and FHIR routes only)",
    )
    serve.set_defaults(handler=_serve)

    broker = commands.add_parser("broker", help="device accounts on the MQTT broker")
    broker_actions = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    broker_actions.add_parser(
        "sync", help="give the embedded Mosquitto one account per active device, and reload it"
    ).set_defaults(handler=_broker_sync)
    broker_actions.add_parser(
        "passwd", help="print device lines for any Mosquitto password_file"
    ).set_defaults(handler=_broker_passwd)

    token = commands.add_parser(
        "token",
        help="sign a clinician/ops/admin bearer token with RPMSTORE_JWT_SECRET (HS256)",
    )
    token.add_argument("--subject", required=True, help="the user (sub claim)")
    token.add_argument(
        "--role", action="append", required=True, choices=["clinician", "ops", "admin"]
    )
    token.add_argument("--care-team", action="append", type=uuid.UUID, default=[])
    token.add_argument("--lifetime", type=int, default=3600, help="seconds (default 3600)")
    token.set_defaults(handler=_token)

    ingest = commands.add_parser("ingest", help="device ingest processes")
    ingest_kinds = ingest.add_subparsers(dest="kind", required=True, metavar="TRANSPORT")
    mqtt_ingest = ingest_kinds.add_parser(
        "mqtt", help="consume device readings from the broker (shared subscription)"
    )
    mqtt_ingest.add_argument(
        "--retire",
        action="store_true",
        help="for an ingestor taken out of service: store what its persistent session "
        "(RPMSTORE_MQTT_CLIENT_ID) still holds, then end the session at the broker",
    )
    mqtt_ingest.set_defaults(handler=_ingest_mqtt)

    _add_simulate_parser(commands)
    _add_demo_parser(commands)
    add_rollup_commands(commands, database_url=_database_url)
    alerts_cli.add_commands(commands, database_url=_database_url)
    add_retention_commands(commands, _database_url)
    add_rechunk_commands(commands, database_url=_database_url)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(settings, args)
    except _USER_ERRORS as exc:
        print(f"rpmstore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
