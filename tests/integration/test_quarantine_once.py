"""The quarantine keeps each raw payload once, and a retried payload is not quarantined twice.

Real API app, real TimescaleDB. Issue 16: every quarantine row held the whole payload, so one
payload of 1,000 bad readings was written 1,000 times, and a device retrying after a 503 had
everything quarantined again.
"""

from __future__ import annotations

from typing import Any

from tests.integration.test_http_ingest import Ward, spo2, ward  # noqa: F401  # the fixture

_COUNTS = """
SELECT (SELECT count(*) FROM rpm.ingest_payloads),
       (SELECT count(*) FROM rpm.ingest_quarantine),
       (SELECT coalesce(sum(quarantine_count), 0) FROM rpm.ingest_batches)
"""


def _unknown(n: int) -> dict[str, Any]:
    return {**spo2(n + 1), "metric": f"no_such_metric_{n % 3}"}


def test_a_payload_of_bad_readings_is_kept_once_and_a_retry_is_recognised(
    ward: Ward,  # noqa: F811  # the fixture imported above
) -> None:
    body = {"readings": [_unknown(n) for n in range(200)] + [spo2(500)]}
    first = ward.post(body)
    assert first.status_code == 200, first.text
    assert first.json()["stored"] == 1 and len(first.json()["rejected"]) == 200
    assert ward.conn.execute(_COUNTS).fetchone() == (1, 200, 200)
    # The same bytes again (a retry): the answer is the same, nothing is quarantined twice.
    retry = ward.post(body)
    assert retry.status_code == 200, retry.text
    assert retry.json()["rejected"] == first.json()["rejected"]
    assert retry.json()["duplicates"] == 1
    assert ward.conn.execute(_COUNTS).fetchone() == (1, 200, 200)
    text = ward.client.get("/metrics").text
    repeated = 'outcome="duplicate",reason="unknown_metric",source="http"'
    assert f"rpmstore_ingest_readings_total{{{repeated}}} 200.0" in text
    quarantined = 'outcome="quarantined",reason="unknown_metric",source="http"'
    assert f"rpmstore_ingest_readings_total{{{quarantined}}} 200.0" in text


def test_a_payload_refused_whole_twice_is_one_row(
    ward: Ward,  # noqa: F811  # the fixture imported above
) -> None:
    for _ in range(3):
        assert ward.post(b"{not json").status_code == 400
    assert ward.conn.execute(_COUNTS).fetchone() == (1, 1, 1)
    # A different payload is its own row, referencing its own bytes.
    assert ward.post(b"{not json either").status_code == 400
    assert ward.conn.execute(_COUNTS).fetchone() == (2, 2, 2)
