"""Structured logging set-up. Only entry points call this; library code never sets log levels."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

_CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is when the record is emitted.

    A plain StreamHandler keeps the stream of the moment it was made; whoever swaps
    ``sys.stderr`` later (a test's output capture, closed when the test ends) would leave it
    writing into a closed file from threads that outlive the swap.
    """

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass  # StreamHandler.__init__ and setStream assign it; the current stderr always wins


def configure_logging(level: str, fmt: Literal["json", "console"]) -> None:
    """Route every logger to stderr, as one JSON object per line or as plain text."""
    handler = _CurrentStderr()
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
