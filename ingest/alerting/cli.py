"""``rpmstore alerts sweep [--loop --interval S]`` (the missing-data sweep) and ``rpmstore
alerts run`` (the alert outbox evaluated continuously, plus the sweep).

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
from ingest.alerting.worker import AlertWorker

log = logging.getLogger(__name__)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    database_url: Callable[[Any], str],
) -> None:
    """Add ``alerts sweep``; ``database_url(settings)`` says where the database is."""
    alerts = commands.add_parser(
        "alerts", help="alert rules: the outbox worker and the missing-data sweep"
    )
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

    run = actions.add_parser(
        "run",
        help="evaluate the alert outbox continuously and sweep periodically (the alert "
        "service when ingesting processes run with RPMSTORE_ALERTS_INLINE=false)",
    )
    run.add_argument(
        "--poll", type=_seconds, default=0.25, metavar="S", help="outbox poll interval (0.25)"
    )
    run.add_argument(
        "--sweep-interval", type=_seconds, default=60.0, metavar="S", help="between sweeps (60)"
    )

    def run_handler(settings: Any, args: argparse.Namespace) -> int:
        return asyncio.run(
            _run(database_url(settings), poll_s=args.poll, sweep_interval_s=args.sweep_interval)
        )

    run.set_defaults(handler=run_handler)


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


async def _run(database_url: str, *, poll_s: float, sweep_interval_s: float) -> int:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=2,  # the evaluator's connection and the sweep's
        server_settings={"application_name": "rpmstore-alerts"},
        command_timeout=60,
    ) as pool:
        worker = AlertWorker(pool, sweep_interval_s=sweep_interval_s, poll_interval_s=poll_s)
        await worker.start()
        log.info("alert worker running", extra={"poll_s": poll_s})
        try:
            await stop.wait()
        finally:
            await worker.stop()
    return 0


def _report(result: SweepResult) -> None:
    print(  # noqa: T201 - the command's output
        f"missing-data alerts opened {result.opened}, resolved {result.resolved}; "
        f"parked evaluations done {result.parked_evaluated}; "
        f"outbox batches evaluated {result.outbox_evaluated}",
        flush=True,
    )
