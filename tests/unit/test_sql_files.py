"""Named SQL blocks and migration files as shipped."""

from __future__ import annotations

from importlib import resources

import pytest

from schema.migrate import (
    NO_TRANSACTION_MARKER,
    Layer,
    LayerFile,
    Migration,
    discover_layer,
    discover_migrations,
)
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


def test_layer_files_run_in_name_order_and_are_checksummed_with_their_names() -> None:
    layer = discover_layer()
    names = [file.name for file in layer.files]
    assert names == sorted(names)
    assert names[0].startswith("10_")
    a, b = LayerFile("10_a.sql", "SELECT 1;"), LayerFile("20_b.sql", "SELECT 2;")
    assert Layer((a, b)).checksum != Layer((b, a)).checksum
    assert Layer((a,)).checksum != Layer((LayerFile("11_a.sql", a.sql),)).checksum
    assert len(Layer((a, b)).checksum) == 64


def test_layer_holds_no_versioned_ddl() -> None:
    """Tables, columns and indexes are versioned: they belong in a numbered migration."""
    for file in discover_layer().files:
        text = file.sql.upper()
        for statement in ("CREATE TABLE", "ALTER TABLE RPM.", "CREATE INDEX", "DROP TABLE"):
            if statement == "ALTER TABLE RPM." and "ENABLE ROW LEVEL SECURITY" in text:
                continue
            assert statement not in text, f"{file.name}: {statement}"
