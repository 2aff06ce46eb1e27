"""``rpmstore db up|down|status|url``: the embedded TimescaleDB + Mosquitto stack."""

from __future__ import annotations

import argparse

import psycopg

from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, say
from rpmstore.localstack import stack
from rpmstore.settings import Settings
from schema.edition import detect_edition


def _up(settings: Settings, _args: argparse.Namespace) -> int:
    urls = stack.up(settings)
    say(f"up ({stack.choose_backend(settings)}): DATABASE_URL and MQTT_URL from 'rpmstore db url'")
    with psycopg.connect(urls.database_url) as conn:
        edition = detect_edition(conn)
    say(
        f"PostgreSQL {edition.postgres_version}, TimescaleDB {edition.timescaledb_version} "
        f"({edition.license} edition)"
    )
    return 0


def _down(settings: Settings, _args: argparse.Namespace) -> int:
    stack.down(settings)
    say("down")
    return 0


def _status(settings: Settings, _args: argparse.Namespace) -> int:
    servers = stack.server_status(settings)
    say(f"backend:     {servers.backend}")
    say(f"postgres:    {'running' if servers.postgres_running else 'stopped'}")
    if servers.mosquitto_running is not None:
        say(f"mosquitto:   {'running' if servers.mosquitto_running else 'stopped'}")
    if not servers.postgres_running:
        return 1
    with psycopg.connect(endpoints.database_url(settings), connect_timeout=10) as conn:
        edition = detect_edition(conn)
    say(f"PostgreSQL:  {edition.postgres_version}")
    say(f"TimescaleDB: {edition.timescaledb_version}")
    say(f"edition:     {edition.license}")
    return 0


def _url(settings: Settings, args: argparse.Namespace) -> int:
    urls = endpoints.stack_urls(settings)
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
            say(f"{prefix}{name}='{value}'")
    return 0


def register(commands: Subcommands) -> None:
    db = commands.add_parser("db", help="the embedded TimescaleDB + Mosquitto stack")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("up", help="start (building on first use); idempotent").set_defaults(
        handler=_up
    )
    actions.add_parser("down", help="stop both servers").set_defaults(handler=_down)
    actions.add_parser("status", help="servers, versions and edition").set_defaults(handler=_status)
    url = actions.add_parser("url", help="print the connection URLs (they hold passwords)")
    url.add_argument("--export", action="store_true", help="prefix lines with 'export'")
    url.set_defaults(handler=_url)
