"""0015 quarantine_payloads_once moves the quarantine's existing raw payloads without loss.

Before 0015 every quarantine row held its payload's bytes; after it, each payload is kept once
in rpm.ingest_payloads and referenced. A database that already has quarantine rows (including
a retry that quarantined the same reading twice, which 0015's uniqueness forbids) must migrate,
and migrate back, keeping every payload's bytes.
"""

from __future__ import annotations

import psycopg

from schema.migrate import Migrator

_OLD_ROW = """
INSERT INTO rpm.ingest_quarantine (source, reason, detail, raw_payload, reading_index)
VALUES ('http', %s, %s, %s, %s)
"""
_NEW_ROWS = """
SELECT q.reason, q.reading_index, length(q.detail), p.raw_payload
FROM rpm.ingest_quarantine q JOIN rpm.ingest_payloads p USING (payload_sha256)
ORDER BY q.quarantine_id
"""


def test_existing_quarantine_rows_keep_their_payloads_once_and_back_again(
    empty_db_url: str,
) -> None:
    big, small = b'{"readings": [' + b"1, " * 500 + b"1]}", b"{not json"
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        migrator = Migrator(conn)
        migrator.up(14)
        rows = [
            ("unknown_metric", "no such metric", big, 0),
            ("unknown_metric", "no such metric", big, 1),
            ("unknown_metric", "no such metric", big, 1),  # a retry quarantined it again
            ("malformed_json", "x" * 3000, small, None),  # a detail beyond the new bound
        ]
        for row in rows:
            conn.execute(_OLD_ROW, row)
        migrator.up()
        assert conn.execute(_NEW_ROWS).fetchall() == [
            ("unknown_metric", 0, 14, big),
            ("unknown_metric", 1, 14, big),
            ("malformed_json", None, 1000, small),
        ]
        assert conn.execute("SELECT count(*) FROM rpm.ingest_payloads").fetchone() == (2,)
        migrator.down(1)
        assert conn.execute(
            "SELECT reading_index, raw_payload FROM rpm.ingest_quarantine ORDER BY quarantine_id"
        ).fetchall() == [(0, big), (1, big), (None, small)]
