"""Errors of the retention jobs: each leaves the data where it was and says why."""

from __future__ import annotations


class RetentionError(RuntimeError):
    """Base class: a retention step did not change the data it was about."""


class ArchiveError(RetentionError):
    """The archive could not be written or read (URL, permissions, storage)."""


class ArchiveVerificationError(ArchiveError):
    """The archive read back is not exactly the rows it was made from."""


class SliceChangedError(RetentionError):
    """Rows of a slice changed between its archive and its drop: nothing was dropped."""


class RestoreError(RetentionError):
    """An archived range could not be restored."""
