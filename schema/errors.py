"""One policy for database errors: is it worth retrying, does it refuse the data, or is it a bug?

Every retry loop in rpmstore (the group committer, the MQTT consumer, the alert worker, the
rollup refresher, retention, the retention-horizon refresh, the device lookup) asks
:func:`classify` instead of keeping its own tuple of exception classes, so that the loops can
no longer drift apart. Errors are told apart by SQLSTATE class (asyncpg's and psycopg's
exception classes are both generated from the SQLSTATE table) and, for errors raised on the
client side that carry no SQLSTATE, by exception class. Never by message text.

- ``TRANSIENT``: says nothing about the statement or the data; the same work may succeed if
  tried again later (possibly on a new connection).
- ``DATA``: the server (or the driver, before sending) refused the values. Retrying the same
  payload fails the same way forever: quarantine it.
- ``DEFECT``: everything else -- a bug, a missing privilege, a schema that does not match the
  code. Retrying does not help until someone changes something; what a loop does about it
  (fail, park, keep waiting) is that loop's decision, made knowingly.
"""

from __future__ import annotations

import enum
from typing import Final

import asyncpg
import asyncpg.exceptions
import asyncpg.exceptions._base
import psycopg

__all__ = ["ErrorKind", "classify", "is_transient", "refuses_the_data", "sqlstate"]


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    DATA = "data"
    DEFECT = "defect"


# SQLSTATE classes (the first two characters) that say nothing about the statement's data.
_TRANSIENT_CLASSES: Final = frozenset(
    {
        "08",  # connection exception: the connection broke or could not be made
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: too many connections, disk full, out of memory
        "57",  # operator intervention: admin/crash shutdown, cannot connect now, query canceled
        "58",  # system error (outside PostgreSQL): I/O errors
    }
)
# Single codes of otherwise non-transient classes.
_TRANSIENT_CODES: Final = frozenset(
    {
        "55P03",  # lock_not_available (lock_timeout, NOWAIT): the lock holder will finish
    }
)
_DATA_CLASSES: Final = frozenset(
    {
        "22",  # data exception: out of range, invalid text representation, ...
        "23",  # integrity constraint violation: not null, check, unique, foreign key
    }
)

_AsyncpgClientDataError: Final = (
    asyncpg.exceptions._base.DataError
)  # shadowed in asyncpg.exceptions
# asyncpg's client-side errors carry no SQLSTATE. Its InterfaceError is how it reports a
# connection that was closed under it ("connection is closed", a pool that released it); the
# subclasses below are not about the connection but about the call or the configuration.
_ASYNCPG_CLIENT_DEFECTS: Final = (
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE the server sent with ``exc`` (asyncpg or psycopg), or None.

    None for client-side errors (a lost connection noticed by the driver, a value the driver
    could not encode) and for anything that is not a database error.
    """
    if isinstance(exc, asyncpg.PostgresError | psycopg.Error):
        code = getattr(exc, "sqlstate", None)
        return code if isinstance(code, str) and len(code) == 5 else None
    return None


def classify(exc: BaseException) -> ErrorKind | None:
    """What kind of failure ``exc`` is; None for what is not an error but control flow.

    None: ``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit`` and other
    BaseExceptions that are not Exceptions. They must be re-raised, never retried or
    quarantined.
    """
    if not isinstance(exc, Exception):
        return None
    code = sqlstate(exc)
    if code is not None:
        return _classify_sqlstate(code)
    return _classify_client_side(exc)


def is_transient(exc: BaseException) -> bool:
    """Whether the same work may succeed if simply tried again later."""
    return classify(exc) is ErrorKind.TRANSIENT


def refuses_the_data(exc: BaseException) -> bool:
    """Whether the values themselves were refused: quarantine them, never retry them."""
    return classify(exc) is ErrorKind.DATA


def _classify_sqlstate(code: str) -> ErrorKind:
    if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
        return ErrorKind.TRANSIENT
    if code[:2] in _DATA_CLASSES:
        return ErrorKind.DATA
    return ErrorKind.DEFECT


def _classify_client_side(exc: Exception) -> ErrorKind:
    """An error without a SQLSTATE: decided by its exception class."""
    # asyncpg reports an argument it cannot encode as ``asyncpg.exceptions.DataError``, the
    # class-22 PostgresError (SQLSTATE 22000, classified above); its _base module also has a
    # client-side DataError, an InterfaceError (so checked before InterfaceError, its base).
    if isinstance(exc, _AsyncpgClientDataError | psycopg.DataError | psycopg.IntegrityError):
        return ErrorKind.DATA
    if isinstance(exc, _ASYNCPG_CLIENT_DEFECTS):
        return ErrorKind.DEFECT
    if isinstance(
        exc,
        # OSError covers ConnectionError and (Python 3.11) TimeoutError = asyncio.TimeoutError.
        OSError
        | asyncpg.InterfaceError
        # asyncpg raises it (or ProtocolError, a subclass) from a pooled connection whose
        # server vanished mid-operation, and OutdatedSchemaCacheError (also a subclass) after
        # a concurrent ALTER TYPE, which it clears so that the next attempt succeeds.
        | asyncpg.exceptions.InternalClientError
        # psycopg without a SQLSTATE: the connection was lost or refused, or a pool timed out
        # (psycopg_pool.PoolTimeout is an OperationalError).
        | psycopg.OperationalError,
    ):
        return ErrorKind.TRANSIENT
    return ErrorKind.DEFECT
