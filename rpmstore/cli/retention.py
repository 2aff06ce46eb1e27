"""``rpmstore retention plan|run|hold`` and ``rpmstore archive restore``."""

from __future__ import annotations

import argparse
import getpass
import uuid
from datetime import UTC, datetime

import psycopg

from retention.errors import RetentionError
from retention.holds import list_holds, place_hold, release_hold
from retention.plan import Plan, build_plan
from retention.restore import restore_range
from retention.run import RetentionOptions, RunResult, run_retention
from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, say, timestamp
from rpmstore.settings import Settings


def _operator(settings: Settings, args: argparse.Namespace) -> str:
    return args.operator or settings.retention_operator or getpass.getuser()


def _archive_url(settings: Settings, args: argparse.Namespace) -> str:
    return args.archive_url or settings.archive_url or str(settings.home / "archive")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def print_plan(plan: Plan) -> None:
    say(f"retention plan as of {plan.as_of.isoformat()}")
    for target, horizon in plan.horizons.items():
        say(f"  {target}: chunks ending on or before {horizon.isoformat()} are due")
    say(f"  patients under legal hold: {len(plan.held_patients)}")
    if not plan.slices:
        say("nothing due")
    for s in plan.slices:
        what = "drop" if s.action == "drop_chunk" else f"delete class {s.metric_class}"
        state = f"SKIP: {s.blocked}" if s.blocked else "due"
        say(
            f"{s.target.name} [{s.start.isoformat()}, {s.end.isoformat()}) {what}: "
            f"{s.row_count} rows, {s.held_rows} held rows of {s.held_patients} patients, "
            f"{_size(s.bytes)} freed, chunks {', '.join(s.chunks)} — {state}"
        )
    due = plan.due
    say(
        f"total: {len(due)} slices due, {sum(s.row_count for s in due)} rows archived then "
        f"removed, {sum(s.held_rows for s in due)} held rows kept, "
        f"{_size(plan.bytes_freed)} freed; {len(plan.slices) - len(due)} skipped"
    )
    for note in plan.notes:
        say(f"note: {note}")


def _print_run(result: RunResult) -> None:
    for s in result.slices:
        where = s.archived.archive_uri if s.archived else "-"
        reason = f" ({s.reason})" if s.reason else ""
        say(
            f"{s.work.target.name} [{s.work.start.isoformat()}, {s.work.end.isoformat()}) "
            f"{s.work.action}: {s.status}{reason}; archive {where}"
        )
    say(
        f"run {result.run_id}: {result.outcome}; {result.rows_archived} rows archived, "
        f"{result.rows_dropped} removed, {result.rows_held} held rows kept"
    )


def _connect(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(endpoints.database_url(settings), autocommit=True)


def _plan(settings: Settings, args: argparse.Namespace) -> int:
    with _connect(settings) as conn:
        print_plan(build_plan(conn, as_of=args.as_of or datetime.now(UTC)))
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    options = RetentionOptions(
        archive_url=_archive_url(settings, args),
        operator=_operator(settings, args),
        lock_timeout_ms=settings.retention_lock_timeout_ms,
        as_of=args.as_of,
    )
    with _connect(settings) as conn:
        result = run_retention(conn, options)
    _print_run(result)
    return 0 if result.outcome in ("succeeded", "nothing_due") else 1


def _hold_place(settings: Settings, args: argparse.Namespace) -> int:
    with _connect(settings) as conn:
        hold_id = place_hold(conn, args.patient, reason=args.reason, by=_operator(settings, args))
    say(f"legal hold {hold_id} placed on patient {args.patient}")
    return 0


def _hold_release(settings: Settings, args: argparse.Namespace) -> int:
    with _connect(settings) as conn:
        release_hold(conn, args.hold_id, reason=args.reason, by=_operator(settings, args))
    say(f"legal hold {args.hold_id} released")
    return 0


def _hold_list(settings: Settings, _args: argparse.Namespace) -> int:
    with _connect(settings) as conn:
        for h in list_holds(conn):
            state = (
                f"released {h.released_at:%Y-%m-%d} by {h.released_by}"
                if h.released_at
                else "active"
            )
            say(
                f"{h.hold_id}\t{h.patient_id}\t{state}\tplaced {h.placed_at:%Y-%m-%d} "
                f"by {h.placed_by}: {h.reason}"
            )
    return 0


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    schema, _, table = args.table.partition(".")
    with _connect(settings) as conn:
        try:
            result = restore_range(
                conn,
                start=args.start,
                end=args.end,
                operator=_operator(settings, args),
                target=(schema, table),
            )
        except RetentionError as exc:
            say(f"rpmstore: error: {exc}")
            return 1
    say(
        f"restore {result.run_id}: {result.outcome}; {len(result.archives)} archives, "
        f"{result.rows_read} rows in range, {result.rows_restored} inserted, "
        f"{result.rows_read - result.rows_restored} already present"
    )
    return 0


def _operator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator", help="who does this (default: RPMSTORE_RETENTION_OPERATOR, then $USER)"
    )


def register(commands: Subcommands) -> None:
    """Register ``retention`` and ``archive``."""
    _register_retention(commands)
    _register_archive(commands)


def _register_retention(commands: Subcommands) -> None:
    retention = commands.add_parser("retention", help="retention policies, archive and legal hold")
    actions = retention.add_subparsers(dest="action", required=True, metavar="ACTION")
    plan_parser = actions.add_parser("plan", help="dry run: what is due, held, blocked, freed")
    plan_parser.add_argument("--as-of", type=timestamp, help="measure horizons from this time")
    plan_parser.set_defaults(handler=_plan)
    run_parser = actions.add_parser("run", help="archive what is due, verify it, then drop it")
    run_parser.add_argument("--as-of", type=timestamp, help="measure horizons from this time")
    run_parser.add_argument(
        "--archive-url", help="folder or fsspec URL (default: RPMSTORE_ARCHIVE_URL)"
    )
    _operator_option(run_parser)
    run_parser.set_defaults(handler=_run)
    hold = actions.add_parser("hold", help="legal holds on patients' raw readings")
    hold_actions = hold.add_subparsers(dest="hold_action", required=True, metavar="ACTION")
    place = hold_actions.add_parser("place", help="hold a patient's raw readings")
    place.add_argument("patient", type=uuid.UUID, metavar="PATIENT_ID")
    place.add_argument("--reason", required=True)
    _operator_option(place)
    place.set_defaults(handler=_hold_place)
    release = hold_actions.add_parser("release", help="release a hold (its record stays)")
    release.add_argument("hold_id", type=int, metavar="HOLD_ID")
    release.add_argument("--reason", required=True)
    _operator_option(release)
    release.set_defaults(handler=_hold_release)
    hold_actions.add_parser("list", help="every hold, active and released").set_defaults(
        handler=_hold_list
    )


def _register_archive(commands: Subcommands) -> None:
    archive = commands.add_parser("archive", help="retention archives")
    archive_actions = archive.add_subparsers(dest="action", required=True, metavar="ACTION")
    restore_parser = archive_actions.add_parser(
        "restore", help="reload an archived time range (idempotent)"
    )
    restore_parser.add_argument("--start", type=timestamp, required=True)
    restore_parser.add_argument("--end", type=timestamp, required=True)
    restore_parser.add_argument("--table", default="rpm.readings", help="default rpm.readings")
    _operator_option(restore_parser)
    restore_parser.set_defaults(handler=_restore)
