"""``rpmstore migrate [status|up|down]``: the schema migrations."""

from __future__ import annotations

import argparse

import psycopg

from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, say
from rpmstore.settings import Settings
from schema.migrate import Migrator


def _migrator(settings: Settings, conn: psycopg.Connection) -> Migrator:
    return Migrator(conn, lock_timeout_s=settings.migrate_lock_timeout_s)


def _status(settings: Settings, _args: argparse.Namespace) -> int:
    with psycopg.connect(endpoints.database_url(settings), autocommit=True) as conn:
        states = _migrator(settings, conn).status()
    for state in states:
        applied = f"  applied {state.applied_at:%Y-%m-%d %H:%M:%S%z}" if state.applied_at else ""
        say(f"{state.version:04d}_{state.name:<30} {state.status}{applied}")
    return 0 if all(s.status in ("applied", "pending") for s in states) else 1


def _up(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(endpoints.database_url(settings), autocommit=True) as conn:
        applied = _migrator(settings, conn).up(target=args.to)
    say("\n".join(f"applied {m.label}" for m in applied) or "schema is up to date")
    return 0


def _down(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(endpoints.database_url(settings), autocommit=True) as conn:
        reverted = _migrator(settings, conn).down(args.steps)
    say("\n".join(f"reverted {m.label}" for m in reverted) or "nothing to revert")
    return 0


def register(commands: Subcommands) -> None:
    migrate = commands.add_parser("migrate", help="schema migrations")
    actions = migrate.add_subparsers(dest="action", metavar="ACTION")
    migrate.set_defaults(handler=_status)
    actions.add_parser("status", help="applied and pending migrations").set_defaults(
        handler=_status
    )
    up = actions.add_parser("up", help="apply pending migrations")
    up.add_argument("--to", type=int, default=None, metavar="VERSION", help="stop at VERSION")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="revert the newest N migrations")
    down.add_argument("steps", type=int, metavar="N")
    down.set_defaults(handler=_down)
