"""``rpmstore alerts sweep [--loop]`` and ``rpmstore alerts run`` (the alert service)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from alerting import SweepResult, run_alert_service
from jobs.sweep import sweep_periodically
from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, positive_float, say
from rpmstore.settings import Settings


def _stop_event_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    return stop


def _report(result: SweepResult) -> None:
    say(
        f"missing-data alerts opened {result.opened}, resolved {result.resolved}; "
        f"parked evaluations done {result.parked_evaluated}; "
        f"outbox batches evaluated {result.outbox_evaluated}"
    )


def _sweep(settings: Settings, args: argparse.Namespace) -> int:
    async def sweep() -> None:
        stop = _stop_event_on_signals() if args.loop else asyncio.Event()
        await sweep_periodically(
            endpoints.database_url(settings),
            interval_s=args.interval if args.loop else None,
            stop=stop,
            on_result=_report,
        )

    asyncio.run(sweep())
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> None:
        await run_alert_service(
            endpoints.database_url(settings),
            poll_s=args.poll,
            sweep_interval_s=args.sweep_interval,
            stop=_stop_event_on_signals(),
        )

    asyncio.run(run())
    return 0


def register(commands: Subcommands) -> None:
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
        "--interval", type=positive_float, default=60.0, metavar="S", help="between sweeps (60)"
    )
    sweep.set_defaults(handler=_sweep)
    run = actions.add_parser(
        "run",
        help="evaluate the alert outbox continuously and sweep periodically (the alert "
        "service when ingesting processes run with RPMSTORE_ALERTS_INLINE=false)",
    )
    run.add_argument(
        "--poll", type=positive_float, default=0.25, metavar="S", help="outbox poll interval (0.25)"
    )
    run.add_argument(
        "--sweep-interval",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="between sweeps (60)",
    )
    run.set_defaults(handler=_run)
