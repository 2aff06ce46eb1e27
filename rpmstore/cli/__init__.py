"""The ``rpmstore`` command: the composition root that builds settings and wires the parts.

Every subcommand is defined here, one module per area; the parts expose plain typed functions
and classes, never argparse, output or signal handling (an import-linter contract forbids the
parts from importing ``rpmstore``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import psycopg

from api.auth import InsecureAuthConfigError
from ingest.transport import InsecureTransportError
from rpmstore.cli import (
    alerts,
    broker,
    ingest,
    migrate,
    rechunk,
    retention,
    rollups,
    serve,
    simulate,
    stack,
)
from rpmstore.cli.common import Handler, fail
from rpmstore.cli.serve import token_signer
from rpmstore.localstack.errors import (
    DeviceCertificateError,
    StackNotRunningError,
    StackUnavailableError,
)
from rpmstore.logs import configure_logging
from rpmstore.settings import Settings
from schema.edition import TimescaleMissingError
from schema.migrate import MigrationError

__all__ = ["build_parser", "main", "token_signer"]

# Errors a user can act on: printed as one line, exit status 2, no traceback.
_USER_ERRORS = (
    StackUnavailableError,
    StackNotRunningError,
    MigrationError,
    TimescaleMissingError,
    psycopg.OperationalError,
    InsecureAuthConfigError,
    InsecureTransportError,
    DeviceCertificateError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpmstore", description="Remote patient monitoring store on TimescaleDB."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order is the order `rpmstore --help` lists them in.
    stack.register(commands)
    migrate.register(commands)
    serve.register(commands)
    broker.register(commands)
    serve.register_token(commands)
    ingest.register(commands)
    simulate.register_simulate(commands)
    simulate.register_demo(commands)
    rollups.register(commands)
    alerts.register(commands)
    retention.register(commands)
    rechunk.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(settings, args)
    except _USER_ERRORS as exc:
        return fail(str(exc))
