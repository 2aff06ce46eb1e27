"""``rpmstore alerts sweep [--loop --interval S]``: the missing-data sweep as a command.

Registered by the composition root (``rpmstore/cli.py``), which supplies the database URL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ingest.alerting.sweep import SweepResult, sweep_missing_data

log = logging.getLogger(__name__)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    database_url: Callable[[Any], str],
) -> None:
    """Add ``alerts sweep``; ``database_url(settings)`` says where the database is."""
    alerts = commands.add_parser("alerts", help="alert rules: the missing-data sweep")
    actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    sweep = actions.add_parser(
        "sweep",
        help="open missing-data alerts, resolve those whose data resumed, "
        "evaluate parked evaluations",
    )
    sweep.add_argument("--loop", action="store_true", help="repeat until SIGTERM or SIGINT")
    sweep.add_argument(
        "--interval", type=_seconds, default=60.0, metavar="S", help="between sweeps (60)"
    )

    def handler(settings: Any, args: argparse.Namespace) -> int:
        return asyncio.run(_sweep(database_url(settings), loop=args.loop, interval_s=args.interval))

    sweep.set_defaults(handler=handler)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


async def _sweep(database_url: str, *, loop: bool, interval_s: float) -> int:
    stop = asyncio.Event()
    if loop:
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            result = await sweep_missing_data(conn, datetime.now(UTC))
            _report(result)
            if not loop:
                return 0
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                return 0
            except TimeoutError:
                continue
    finally:
        await conn.close()


def _report(result: SweepResult) -> None:
    print(  # noqa: T201 - the command's output
        f"missing-data alerts opened {result.opened}, resolved {result.resolved}; "
        f"parked evaluations done {result.parked_evaluated}",
        flush=True,
    )
