"""``rpmstore rechunk`` and ``rpmstore repartition``: what they take and what they print."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import psycopg

from jobs.rechunk import Options, Rechunker, RechunkError, RunReport
from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, positive_float, positive_int, say
from rpmstore.settings import Settings

_ACTIONS = ("rollback", "finalize", "status")
# Test hook only (tests/integration/test_rechunk.py): "between:N" or "inside:N" makes the
# process stop for good after N committed batches (between two batches, or inside the N+1th
# before its commit), so a test can SIGKILL it at a known point.
_PAUSE_ENV = "RPMSTORE_RECHUNK_TEST_PAUSE"
PAUSE_MARKER = "rechunk test pause reached"


def _split_table(text: str) -> tuple[str, str]:
    schema, _, name = text.rpartition(".")
    return (schema or "rpm", name)


def _pause_hook() -> Callable[[str, int], None] | None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return None
    where, _, count = spec.partition(":")
    threshold = int(count)

    def pause(place: str, batches: int) -> None:
        if place == where and batches >= threshold:
            sys.stderr.write(f"{PAUSE_MARKER}: {place} after {batches} batches\n")
            sys.stderr.flush()
            while True:
                time.sleep(3600)

    return pause


def _options(args: argparse.Namespace) -> Options:
    return Options(
        batch_rows=args.batch_rows,
        lock_timeout_s=args.lock_timeout,
        lock_attempts=args.lock_attempts,
        cutover=not args.no_cutover,
        pause=_pause_hook(),
    )


def _print_report(report: RunReport) -> None:
    target = ", ".join(d.describe() for d in report.target)
    say(f"run {report.run_id}: {report.kind} {report.table} -> {target}")
    say(
        f"copied {report.copied_rows} rows in {report.batches} batches from {report.chunks} "
        f"chunks; {report.verified_chunks} chunks verified (count and checksum)"
    )
    say("reconciliation (rows per UTC day):")
    say(f"  {'day':<10} {'old':>12} {'new':>12} {'difference':>10}")
    for day in report.reconciliation:
        say(f"  {day.day!s:<10} {day.old_rows:>12} {day.new_rows:>12} {day.difference:>10}")
    total_old = sum(d.old_rows for d in report.reconciliation)
    total_new = sum(d.new_rows for d in report.reconciliation)
    say(f"  {'total':<10} {total_old:>12} {total_new:>12} {total_new - total_old:>10}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    say(f"timings: {timings}")
    if report.state == "cut_over":
        say(
            f"cut over: {report.table} is the new table; 'rpmstore rechunk rollback' restores "
            f"the old one until 'rpmstore rechunk finalize' drops it"
        )
    else:
        say("verified, not cut over (--no-cutover): run the command again without it")


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, application_name="rpmstore-rechunk")


def _status(rechunker: Rechunker) -> None:
    runs = rechunker.runs()
    if not runs:
        say("no re-chunk runs")
    for run in runs:
        (run_id, kind, table, state, target, operator, started, cut_over, finalized) = run[:9]
        chunks, verified, copied = run[9:]
        dims = ", ".join(
            f"{d['column']} every {d['interval']}"
            if d["kind"] == "time"
            else f"hash({d['column']}) into {d['partitions']}"
            for d in target
        )
        say(
            f"run {run_id}: {kind} {table} -> {dims}: {state}; {copied} rows copied, "
            f"{verified}/{chunks} chunks verified; by {operator}, started {started:%Y-%m-%d %H:%M}"
            + (f", cut over {cut_over:%Y-%m-%d %H:%M}" if cut_over else "")
            + (f", finalized {finalized:%Y-%m-%d %H:%M}" if finalized else "")
        )


def _rechunk(settings: Settings, args: argparse.Namespace) -> int:
    with _connect(endpoints.database_url(settings)) as conn:
        try:
            rechunker = Rechunker(conn, options=_options(args))
            if args.what == "status":
                _status(rechunker)
                return 0
            if args.what in _ACTIONS:
                schema, name = _split_table(args.table or "readings")
                action = rechunker.rollback if args.what == "rollback" else rechunker.finalize
                say(action(schema, name))
                return 0
            if args.table is not None:
                say(f"rpmstore: error: unexpected argument {args.table!r}")
                return 2
            if not args.chunk_interval:
                say("rpmstore: error: --chunk-interval is required (e.g. '1 day')")
                return 2
            schema, name = _split_table(args.what)
            _print_report(rechunker.rechunk(schema, name, chunk_interval=args.chunk_interval))
            return 0
        except RechunkError as exc:
            sys.stderr.write(f"rpmstore: error: {exc}\n")
            return 2


def _repartition(settings: Settings, args: argparse.Namespace) -> int:
    with _connect(endpoints.database_url(settings)) as conn:
        try:
            rechunker = Rechunker(conn, options=_options(args))
            schema, name = _split_table(args.table)
            report = rechunker.repartition(
                schema, name, partitions=args.partitions, column=args.column
            )
            _print_report(report)
            return 0
        except RechunkError as exc:
            sys.stderr.write(f"rpmstore: error: {exc}\n")
            return 2


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-rows", type=positive_int, default=50_000, metavar="N", help="rows per batch"
    )
    parser.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="longest wait for the live table's lock at prepare and cutover (2 s)",
    )
    parser.add_argument("--lock-attempts", type=positive_int, default=30, metavar="N", help="(30)")
    parser.add_argument(
        "--no-cutover", action="store_true", help="copy and verify, but keep the old table live"
    )


def register(commands: Subcommands) -> None:
    """Register ``rechunk`` and ``repartition``."""
    rechunk = commands.add_parser(
        "rechunk",
        help="rewrite a hypertable's history with a new chunk interval (resumable, verified)",
        description="rpmstore rechunk readings --chunk-interval '1 day' | "
        "rechunk rollback [TABLE] | rechunk finalize [TABLE] | rechunk status",
    )
    rechunk.add_argument("what", metavar="TABLE|rollback|finalize|status")
    rechunk.add_argument("table", nargs="?", metavar="TABLE", help="for rollback and finalize")
    rechunk.add_argument("--chunk-interval", metavar="INTERVAL", help="e.g. '1 day'")
    _run_options(rechunk)
    rechunk.set_defaults(handler=_rechunk)

    repartition = commands.add_parser(
        "repartition",
        help="add or change a hypertable's hash (space) dimension, same machinery as rechunk",
    )
    repartition.add_argument("table", metavar="TABLE")
    repartition.add_argument("--partitions", type=positive_int, required=True, metavar="N")
    repartition.add_argument(
        "--column",
        default=None,
        help="column to hash (default: the current one, else the first column of the unique key)",
    )
    _run_options(repartition)
    repartition.set_defaults(handler=_repartition)
