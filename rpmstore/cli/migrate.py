"""``rpmstore migrate [status|up|down]``: the schema migrations and the idempotent layer."""

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
        migrator = _migrator(settings, conn)
        states = migrator.status()
        layer = migrator.layer_status()
    for state in states:
        applied = f"  applied {state.applied_at:%Y-%m-%d %H:%M:%S%z}" if state.applied_at else ""
        say(f"{state.version:04d}_{state.name:<30} {state.status}{applied}")
    # The idempotent layer (functions, views, triggers, policies): applied at the newest migration.
    last = ""
    if layer.applied_at is not None and layer.applied_checksum is not None:
        last = f"  {'applied' if layer.status == 'applied' else 'last applied'} "
        last += f"{layer.applied_at:%Y-%m-%d %H:%M:%S%z}"
        if layer.applied_checksum != layer.checksum:
            last += f" ({layer.applied_checksum[:12]})"
    say(f"{'layer ' + layer.checksum[:12]:<35} {layer.status}{last}")
    return 0 if all(s.status in ("applied", "pending") for s in states) else 1


def _up(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(endpoints.database_url(settings), autocommit=True) as conn:
        upgrade = _migrator(settings, conn).upgrade(target=args.to)
    lines = [f"applied {m.label}" for m in upgrade.migrations]
    if upgrade.layer is not None:
        lines.append(f"applied layer {upgrade.layer.checksum[:12]}")
    say("\n".join(lines) or "schema is up to date")
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
