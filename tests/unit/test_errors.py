"""The one database-error policy (schema.errors) on real asyncpg and psycopg exception objects.

Server errors are built the way each driver builds them from a server's ErrorResponse
(asyncpg: ``PostgresError.new`` with the fields; psycopg: the class ``errors.lookup`` finds
for the SQLSTATE), so both drivers are held to the same table of codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import asyncpg.exceptions
import asyncpg.exceptions._base
import psycopg
import psycopg.errors
import psycopg_pool
import pytest

from schema.errors import ErrorKind, classify, is_transient, refuses_the_data, sqlstate

TRANSIENT, DATA, DEFECT = ErrorKind.TRANSIENT, ErrorKind.DATA, ErrorKind.DEFECT

# (SQLSTATE, kind): every transient class, the one transient code of class 55, data classes,
# and neighbours of each that must not be swept along.
SERVER_CODES = [
    ("08000", TRANSIENT),  # connection_exception
    ("08003", TRANSIENT),  # connection_does_not_exist
    ("08006", TRANSIENT),  # connection_failure
    ("40001", TRANSIENT),  # serialization_failure
    ("40P01", TRANSIENT),  # deadlock_detected
    ("53100", TRANSIENT),  # disk_full
    ("53200", TRANSIENT),  # out_of_memory
    ("53300", TRANSIENT),  # too_many_connections
    ("57014", TRANSIENT),  # query_canceled (statement_timeout)
    ("57P01", TRANSIENT),  # admin_shutdown
    ("57P02", TRANSIENT),  # crash_shutdown
    ("57P03", TRANSIENT),  # cannot_connect_now
    ("58000", TRANSIENT),  # system_error
    ("58030", TRANSIENT),  # io_error
    ("55P03", TRANSIENT),  # lock_not_available
    ("55000", DEFECT),  # object_not_in_prerequisite_state
    ("55006", DEFECT),  # object_in_use
    ("22000", DATA),  # data_exception
    ("22003", DATA),  # numeric_value_out_of_range
    ("22P02", DATA),  # invalid_text_representation
    ("22007", DATA),  # invalid_datetime_format
    ("23502", DATA),  # not_null_violation
    ("23503", DATA),  # foreign_key_violation
    ("23505", DATA),  # unique_violation
    ("23514", DATA),  # check_violation
    ("25006", DEFECT),  # read_only_sql_transaction
    ("42501", DEFECT),  # insufficient_privilege
    ("42P01", DEFECT),  # undefined_table
    ("42601", DEFECT),  # syntax_error
    ("0A000", DEFECT),  # feature_not_supported
    ("P0001", DEFECT),  # raise_exception (a RAISE in PL/pgSQL)
    ("XX000", DEFECT),  # internal_error
]


def asyncpg_error(code: str) -> BaseException:
    error: BaseException = asyncpg.PostgresError.new({"C": code, "M": f"server said {code}"})
    return error


def psycopg_error(code: str) -> BaseException:
    return psycopg.errors.lookup(code)(f"server said {code}")


@pytest.mark.parametrize(("code", "kind"), SERVER_CODES)
@pytest.mark.parametrize("driver_error", [asyncpg_error, psycopg_error])
def test_server_errors_are_classified_by_sqlstate_for_both_drivers(
    driver_error: Callable[[str], BaseException], code: str, kind: ErrorKind
) -> None:
    error = driver_error(code)
    assert sqlstate(error) == code
    assert classify(error) is kind
    assert is_transient(error) is (kind is TRANSIENT)
    assert refuses_the_data(error) is (kind is DATA)


@pytest.mark.parametrize(
    "code",
    ["08P42", "40P99", "53P99", "57P99", "58P99", "22P99", "23P99", "42P99"],
)
def test_codes_a_driver_does_not_know_are_classified_by_their_class(code: str) -> None:
    error = asyncpg_error(code)
    assert type(error) is asyncpg.exceptions.UnknownPostgresError
    expected = {"22": DATA, "23": DATA, "42": DEFECT}.get(code[:2], TRANSIENT)
    assert classify(error) is expected


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # The classes the old retry tuples named, built directly.
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"), TRANSIENT),
        (asyncpg.PostgresConnectionError("connection failure"), TRANSIENT),
        (asyncpg.CannotConnectNowError("starting up"), TRANSIENT),
        (asyncpg.AdminShutdownError("terminating connection"), TRANSIENT),
        (asyncpg.CrashShutdownError("crash"), TRANSIENT),
        (asyncpg.DeadlockDetectedError("deadlock"), TRANSIENT),
        (asyncpg.SerializationError("could not serialize"), TRANSIENT),
        (asyncpg.TooManyConnectionsError("too many clients"), TRANSIENT),
        (asyncpg.exceptions.LockNotAvailableError("lock timeout"), TRANSIENT),
        (asyncpg.UniqueViolationError("duplicate key"), DATA),
        (asyncpg.exceptions.NumericValueOutOfRangeError("out of range"), DATA),
        (asyncpg.exceptions.DataError("invalid input for query argument $1"), DATA),
        (asyncpg.exceptions.InsufficientPrivilegeError("permission denied"), DEFECT),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"), DEFECT),
        (asyncpg.exceptions.UndefinedTableError("no such relation"), DEFECT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_asyncpg_server_exception_classes(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # How asyncpg reports a connection lost or closed under it: no SQLSTATE.
        (asyncpg.InterfaceError("connection is closed"), TRANSIENT),
        (asyncpg.exceptions.InternalClientError("unexpected connection state"), TRANSIENT),
        (asyncpg.exceptions._base.ProtocolError("protocol error"), TRANSIENT),
        (
            asyncpg.exceptions.OutdatedSchemaCacheError("cached statement plan is invalid"),
            TRANSIENT,
        ),
        # The driver refused a value before sending it.
        (asyncpg.exceptions._base.DataError("invalid input for query argument"), DATA),
        # Wrong use or configuration: trying again changes nothing.
        (asyncpg.exceptions.ClientConfigurationError("bad dsn"), DEFECT),
        (asyncpg.exceptions.UnsupportedClientFeatureError("not supported"), DEFECT),
        (asyncpg.exceptions.UnsupportedServerFeatureError("not supported"), DEFECT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_asyncpg_client_side_errors(error: BaseException, kind: ErrorKind) -> None:
    assert sqlstate(error) is None
    assert classify(error) is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # psycopg without a SQLSTATE: the connection was lost, refused or is closed.
        (psycopg.OperationalError("server closed the connection unexpectedly"), TRANSIENT),
        (psycopg.OperationalError("the connection is closed"), TRANSIENT),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"), TRANSIENT),
        (psycopg.DataError("value refused"), DATA),
        (psycopg.IntegrityError("constraint"), DATA),
        (psycopg.InterfaceError("wrong use of the connection"), DEFECT),
        (psycopg.ProgrammingError("the query has 2 placeholders but 1 parameters"), DEFECT),
        (psycopg.errors.UndefinedTable("no such relation"), DEFECT),
        (psycopg.errors.LockNotAvailable("lock timeout"), TRANSIENT),
        (psycopg.errors.DeadlockDetected("deadlock"), TRANSIENT),
        (psycopg.errors.UniqueViolation("duplicate key"), DATA),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_psycopg_errors(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind


@pytest.mark.parametrize(
    "error",
    [
        OSError("network unreachable"),
        ConnectionResetError("reset by peer"),
        ConnectionRefusedError("refused"),
        BrokenPipeError("broken pipe"),
        TimeoutError(),  # asyncio.TimeoutError is the same class since Python 3.11
    ],
    ids=lambda error: type(error).__name__,
)
def test_network_and_timeouts_are_transient(error: BaseException) -> None:
    assert sqlstate(error) is None
    assert is_transient(error)
    assert not refuses_the_data(error)


@pytest.mark.parametrize(
    "error",
    [ValueError("bad"), TypeError("bad"), KeyError("k"), RuntimeError("bug"), Exception()],
    ids=lambda error: type(error).__name__,
)
def test_anything_else_is_a_defect(error: BaseException) -> None:
    assert classify(error) is DEFECT
    assert not is_transient(error)
    assert not refuses_the_data(error)


@pytest.mark.parametrize(
    "error",
    [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1), GeneratorExit()],
    ids=lambda error: type(error).__name__,
)
def test_control_flow_is_not_classified(error: BaseException) -> None:
    """Cancellation and exits must propagate: neither retried nor quarantined."""
    assert classify(error) is None
    assert not is_transient(error)
    assert not refuses_the_data(error)


def test_every_asyncpg_server_class_is_classified_by_its_sqlstate_class() -> None:
    """No generated asyncpg class escapes the table: the kind follows the SQLSTATE alone."""
    classes = [
        cls
        for cls in vars(asyncpg.exceptions).values()
        if isinstance(cls, type)
        and issubclass(cls, asyncpg.PostgresError)
        and isinstance(getattr(cls, "sqlstate", None), str)
    ]
    assert len(classes) > 200
    for cls in classes:
        code: str = getattr(cls, "sqlstate")  # noqa: B009 # asyncpg is untyped: a class attribute
        if code == "55P03" or code[:2] in {"08", "40", "53", "57", "58"}:
            expected = TRANSIENT
        elif code[:2] in {"22", "23"}:
            expected = DATA
        else:
            expected = DEFECT
        assert classify(cls("m")) is expected, cls.__name__
