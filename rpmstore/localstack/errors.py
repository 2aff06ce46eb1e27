"""Errors of the local stack, each worded as what the user can do about it."""


class StackUnavailableError(RuntimeError):
    """The embedded servers cannot be started here; the message says what to do instead."""


class StackNotRunningError(RuntimeError):
    """A command needs the local stack but it is not up (and no external server is configured)."""


class DeviceCertificateError(ValueError):
    """A device certificate that cannot be issued or revoked as asked."""
