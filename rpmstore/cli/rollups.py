"""``rpmstore rollups refresh [--loop --interval S]``."""

from __future__ import annotations

import argparse
from datetime import timedelta

import psycopg

from jobs.rollups import MIN_WINDOW, RefreshReport, refresh_forever, refresh_rollups
from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, fail, say, stop_on_signals
from rpmstore.settings import Settings


def _print_report(report: RefreshReport) -> None:
    if not report.ran:
        say("rollups: another refresher is running")
        return
    horizon = report.horizon_start.isoformat() if report.horizon_start else "-"
    threshold = report.threshold.isoformat() if report.threshold else "-"
    say(
        f"rollups ({report.edition}): {horizon} to {threshold}, "
        f"{report.invalidations} invalidations, rows written {dict(report.rows_written)}, "
        f"{report.seconds:.2f} s"
    )


def _refresh(settings: Settings, args: argparse.Namespace) -> int:
    horizon, lag = settings.rollup_raw_horizon, settings.rollup_refresh_lag
    if horizon - lag < MIN_WINDOW:
        return fail(
            f"RPMSTORE_ROLLUP_RAW_HORIZON ({horizon}) must exceed "
            f"RPMSTORE_ROLLUP_REFRESH_LAG ({lag}) by at least {MIN_WINDOW.days} days"
        )
    url = endpoints.database_url(settings)
    if not args.loop:
        with psycopg.connect(url, autocommit=True) as conn:
            _print_report(refresh_rollups(conn, raw_horizon=horizon, lag=lag))
        return 0
    refresh_forever(
        lambda: psycopg.connect(url, autocommit=True),
        interval=timedelta(seconds=args.interval),
        stop=stop_on_signals(),
        on_report=_print_report,
        raw_horizon=horizon,
        lag=lag,
    )
    return 0


def register(commands: Subcommands) -> None:
    rollups = commands.add_parser("rollups", help="1-minute, 1-hour and 1-day rollups")
    actions = rollups.add_subparsers(dest="action", required=True, metavar="ACTION")
    refresh = actions.add_parser(
        "refresh",
        help="materialize new buckets and recompute those late readings touched "
        "(TSL edition: refresh the continuous aggregates)",
    )
    refresh.add_argument("--loop", action="store_true", help="keep refreshing until stopped")
    refresh.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between refreshes with --loop (default 60)",
    )
    refresh.set_defaults(handler=_refresh)
