"""Named SQL blocks and migration files as shipped."""

from __future__ import annotations

from importlib import resources

import pytest

from schema.migrate import NO_TRANSACTION_MARKER, Migration, discover_migrations
from schema.sql import QueryFileError, parse_queries, queries


def test_parse_queries_splits_named_blocks() -> None:
    parsed = parse_queries(
        "-- preamble\n-- name: first\nSELECT 1;\n\n-- name: second\nSELECT %(x)s\n", source="t"
    )
    assert dict(parsed) == {"first": "SELECT 1", "second": "SELECT %(x)s"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("SELECT 1", "no '-- name:' blocks"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2", "defined twice"),
        ("-- name: a\n;\n", "is empty"),
    ],
)
def test_malformed_query_files_are_refused(text: str, problem: str) -> None:
    with pytest.raises(QueryFileError, match=problem):
        parse_queries(text, source="t")


def test_every_shipped_query_file_loads() -> None:
    folder = resources.files("schema") / "queries"
    stems = [
        entry.name.removesuffix(".sql") for entry in folder.iterdir() if entry.name.endswith(".sql")
    ]
    assert stems
    for stem in stems:
        assert queries(stem), stem


def test_shipped_migrations_are_numbered_and_reversible() -> None:
    migrations = discover_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.down_sql for m in migrations), "every shipped migration can be reverted"


def test_checksum_and_transaction_mode_come_from_the_file_text() -> None:
    plain = Migration(1, "x", "CREATE TABLE t (id int);", None)
    edited = Migration(1, "x", "CREATE TABLE t (id int); ", None)
    concurrent = Migration(
        2, "y", f"{NO_TRANSACTION_MARKER}\nCREATE INDEX CONCURRENTLY i ON t (id)", None
    )
    assert plain.checksum != edited.checksum
    assert len(plain.checksum) == 64
    assert plain.transactional
    assert not concurrent.transactional
    assert plain.label == "0001_x"
