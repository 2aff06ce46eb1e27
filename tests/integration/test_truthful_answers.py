"""A 503 means "not kept", every outcome is counted, and the buffer bound does not drift.

Real API (FastAPI app with its lifespan), real TimescaleDB; the commit is held by a real lock
taken from another connection (ACCESS EXCLUSIVE on the table the batch's first statement
reads), never by a timer: the test waits for the batches to be *seen waiting* on that lock.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from api.routes import readings as readings_route
from tests.integration.test_http_ingest import Ward, spo2, ward  # noqa: F401  # the fixture

# Ingest sessions blocked on a lock: batches inside their transaction, waiting.
_BLOCKED = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name LIKE 'rpmstore-ingest-%' AND wait_event_type = 'Lock'
"""
_DB_COUNTS = """
SELECT (SELECT count(*) FROM rpm.readings),
       (SELECT coalesce(sum(duplicate_count), 0) FROM rpm.ingest_batches),
       (SELECT count(*) FROM rpm.ingest_quarantine)
"""


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state of the servers (not a timing assertion: the bound is generous)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def _blocked(admin: psycopg.Connection) -> int:
    row = admin.execute(_BLOCKED).fetchone()
    assert row is not None
    return int(row[0])


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _post_in_thread(to: Ward, body: dict[str, Any], answers: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(to.post(body)))
    thread.start()
    return thread


def test_a_503_means_nothing_was_kept_and_a_slow_commit_is_answered_truthfully(
    ward: Ward,  # noqa: F811  # the fixture imported above
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Short, so the test does not wait 10 s; nothing below depends on how long it is.
    monkeypatch.setattr(readings_route, "COMMIT_TIMEOUT_S", 0.5)
    first = {"readings": [spo2(30), spo2(29)]}
    second = {"readings": [spo2(28)]}
    third = {"readings": [spo2(27), spo2(26), spo2(25)]}
    answers: list[Any] = []
    with psycopg.connect(db_url, autocommit=True) as admin, psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE rpm.rollup_watermark IN ACCESS EXCLUSIVE MODE")
        # Both workers take a request each and wait inside their transaction, past the timeout.
        threads = [_post_in_thread(ward, first, answers)]
        _wait_for(lambda: _blocked(admin) == 1, "the first batch to wait on the lock")
        threads.append(_post_in_thread(ward, second, answers))
        _wait_for(lambda: _blocked(admin) == 2, "the second batch to wait on the lock")
        # No worker is free: this one stays queued, is withdrawn after the timeout, and 503.
        refused = ward.post(third)
        assert refused.status_code == 503, refused.text
        assert refused.json()["reason"] == "database_unavailable"
        locker.rollback()  # releases the lock: the two waiting batches commit
        for thread in threads:
            thread.join()
    # The two requests taken before the timeout were answered with what was committed.
    assert sorted(a.status_code for a in answers) == [200, 200]
    assert sorted(a.json()["stored"] for a in answers) == [1, 2]
    stored = ward.conn.execute("SELECT count(*) FROM rpm.readings").fetchone()
    assert stored == (3,), "the 503's readings were not kept"
    # Nothing left waiting; the 503's readings were never added to any count.
    text = ward.client.get("/metrics").text
    assert _metric(text, "rpmstore_ingest_buffer_rows") == 0
    assert _metric(text, "rpmstore_ingest_readings_total", outcome="stored") == 3
    # The retry of the refused payload is stored whole, once.
    retry = ward.post(third)
    assert retry.status_code == 200 and retry.json()["stored"] == 3


def test_after_a_hostile_run_the_metrics_equal_the_database_and_the_buffer_is_empty(
    ward: Ward,  # noqa: F811  # the fixture imported above
) -> None:
    bodies: list[bytes | dict[str, Any]] = [
        {"readings": [spo2(50), spo2(49, value=150), {"metric": "nope", "value": 1}]},
        {"readings": [spo2(50)]},  # a retry: one duplicate
        {"readings": [spo2(50, value=90.0)]},  # a conflict
        b"{not json",  # refused whole
        b'{"readings": 7}',  # refused whole
        {"device_id": "someone-else", "readings": [spo2(48)]},  # refused whole
        {"readings": []},
        {"readings": [spo2(47), spo2(46)]},
    ]
    for _ in range(3):  # whole-payload refusals again: a drifting bound would show
        for body in bodies:
            assert ward.post(body).status_code < 500
    text = ward.client.get("/metrics").text
    stored, duplicates, quarantined = ward.conn.execute(_DB_COUNTS).fetchone() or (0, 0, 0)
    readings = "rpmstore_ingest_readings_total"
    assert _metric(text, readings, outcome="stored") == stored
    assert _metric(text, readings, outcome="duplicate", reason="") == duplicates
    assert _metric(text, readings, outcome="quarantined") == quarantined
    assert quarantined > 0 and stored > 0 and duplicates > 0
    # The rounds after the first sent the same bad payloads again: recognised, not kept twice.
    assert _metric(text, readings, outcome="duplicate") - duplicates == 2 * quarantined
    assert _metric(text, "rpmstore_ingest_buffer_rows") == 0
