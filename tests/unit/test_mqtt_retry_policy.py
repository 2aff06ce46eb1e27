"""Which failures keep an MQTT message waiting (unacknowledged, retried for as long as they
last) and which count towards quarantining it as ``ingest_failed``."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions
import pytest

from ingest.committer import DatabaseUnavailableError
from ingest.mqtt import _waits_for_the_database


@pytest.mark.parametrize(
    "error",
    [
        DatabaseUnavailableError("lookup failed"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        # Refusals unrelated to the data: an operator fixes them; valid readings wait.
        asyncpg.exceptions.InsufficientPrivilegeError("permission denied"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_failures_that_say_nothing_about_the_message_wait(error: Exception) -> None:
    assert _waits_for_the_database(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a defect in this message's handling"),
        KeyError("field"),
        # The committer quarantines data refusals itself; one reaching MQTT is not waited for.
        asyncpg.exceptions.NumericValueOutOfRangeError("out of range"),
        asyncpg.exceptions.ClientConfigurationError("bad configuration"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_other_failures_count_towards_quarantine(error: Exception) -> None:
    assert not _waits_for_the_database(error)
