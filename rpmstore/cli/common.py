"""What every command module shares: the handler type, output, argument types, signals."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import TypeAlias

from rpmstore.settings import Settings

# A string: argparse._SubParsersAction is not subscriptable at run time.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# A command: the settings read once in main(), the parsed arguments; returns the exit status.
Handler = Callable[[Settings, argparse.Namespace], int]


def say(line: str = "") -> None:
    """One line of a command's output; flushed, because --loop output goes to pipes and logs."""
    print(line, flush=True)


def fail(message: str, status: int = 2) -> int:
    """A user error: one line on stderr, no traceback; returns the exit status."""
    print(f"rpmstore: error: {message}", file=sys.stderr, flush=True)
    return status


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for commands that loop in a thread."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def timestamp(text: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
