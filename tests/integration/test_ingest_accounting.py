"""Hostile payloads over real HTTP ingest: every reading stored, recognised or quarantined.

The payloads are the decoder fuzz's (repeated members, escaped spellings of one name, lone
surrogates, NaN/Infinity, integers beyond a double, nested junk); here each goes through the
whole path (``POST /v1/readings``, validation, the group committer, TimescaleDB) and the
database is asked what became of it. Nothing may vanish: a payload refused whole leaves one
quarantine row referencing its raw bytes, and an accepted one accounts for each of its readings
(once: a payload sent again is recognised, its rejected readings not quarantined twice).
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from tests.integration.test_http_ingest import Ward, ward  # noqa: F401  # the ward fixture
from tests.unit.test_payload_fuzz import Node, hostile_payloads

pytestmark = pytest.mark.slow  # Hypothesis examples, each through real HTTP ingest

_COUNTS = """
SELECT (SELECT count(*) FROM rpm.readings),
       (SELECT count(*) FROM rpm.ingest_quarantine WHERE reading_index IS NULL),
       (SELECT count(*) FROM rpm.ingest_quarantine WHERE reading_index IS NOT NULL)
"""


# This payload's quarantine rows: refused whole, and one per rejected reading.
_THIS_PAYLOAD = """
SELECT count(*) FILTER (WHERE reading_index IS NULL),
       count(*) FILTER (WHERE reading_index IS NOT NULL)
FROM rpm.ingest_quarantine
WHERE payload_sha256 = sha256(%s)
"""
_RAW = "SELECT raw_payload FROM rpm.ingest_payloads WHERE payload_sha256 = sha256(%s)"


def _quarantined(conn: psycopg.Connection, raw: bytes) -> tuple[int, int]:
    row = conn.execute(_THIS_PAYLOAD, (raw,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    row = conn.execute(_COUNTS).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@given(case=hostile_payloads())
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    # One ward for every example: the counts are compared before and after each request.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_reading_of_a_hostile_payload_is_accounted_for(
    ward: Ward,  # noqa: F811  # the fixture imported above
    case: tuple[bytes, Node, int | None],
) -> None:
    raw, document, entries = case
    readings, whole, per_reading = _counts(ward.conn)
    # Hypothesis sends some payloads more than once: a retried payload's rejected readings are
    # recognised (the quarantine keeps each payload once), not quarantined again.
    seen_whole, seen_per_reading = _quarantined(ward.conn, raw)
    response = ward.post(raw)
    assert response.status_code < 500, response.text
    after = _counts(ward.conn)
    now_whole, now_per_reading = _quarantined(ward.conn, raw)
    if response.status_code != 200:
        body = response.json()
        assert body["reason"] == ("duplicate_member" if document.duplicates else "invalid_payload")
        # Refused whole: nothing stored, one quarantine row referencing exactly what was sent.
        assert now_whole == 1 and now_per_reading == seen_per_reading
        assert after == (readings, whole + 1 - seen_whole, per_reading)
        kept = ward.conn.execute(_RAW, (raw,)).fetchone()
        assert kept is not None and bytes(kept[0]) == raw
        return
    assert not document.duplicates, "a payload with a repeated member was accepted"
    result = response.json()
    rejected = [r["index"] for r in result["rejected"]]
    assert len(set(rejected)) == len(rejected) and set(rejected) <= set(range(entries or 0))
    # No panel gets through this generator (it never sends diastolic), so one row per reading.
    assert result["stored"] + result["duplicates"] + len(rejected) == entries
    assert after[0] == readings + result["stored"]
    # Each rejected reading has its quarantine row (conflicts and refusals included), once.
    assert now_per_reading == len(rejected) >= seen_per_reading
    assert after[1:] == (whole, per_reading + now_per_reading - seen_per_reading)
