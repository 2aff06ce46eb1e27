"""The re-chunk's own exceptions (the CLI prints them as one line)."""

from __future__ import annotations


class RechunkError(RuntimeError):
    """Base class: the live table is untouched and the ledger says how far the run got."""


class RechunkRefusedError(RechunkError):
    """The migration cannot (or may not yet) be done; the message says why and what to do."""


class VerificationError(RechunkError):
    """The new table does not hold exactly the old table's rows: no cutover."""


class LockBusyError(RechunkError):
    """A short lock on the live table could not be had in the attempts allowed."""
