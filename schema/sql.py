"""Named SQL blocks kept in ``schema/queries/*.sql``, loaded once and always run with parameters.

A file holds blocks introduced by ``-- name: <identifier>``; everything up to the next such line
is the statement. Placeholders follow the driver that runs the file (psycopg: ``%(name)s``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class QueryFileError(ValueError):
    """A query file is malformed (no names, or the same name twice)."""


def parse_queries(text: str, *, source: str) -> Mapping[str, str]:
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    if len(parts) < 3:
        raise QueryFileError(f"{source}: no '-- name:' blocks")
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise QueryFileError(f"{source}: query {name!r} is defined twice")
        statement = body.strip().rstrip(";").strip()
        if not statement:
            raise QueryFileError(f"{source}: query {name!r} is empty")
        queries[name] = statement
    return MappingProxyType(queries)


@cache
def queries(file_stem: str) -> Mapping[str, str]:
    """The named statements of ``schema/queries/<file_stem>.sql``."""
    text = (resources.files("schema") / "queries" / f"{file_stem}.sql").read_text()
    return parse_queries(text, source=f"schema/queries/{file_stem}.sql")


def schema_file(name: str) -> str:
    """A whole SQL script shipped in the schema package (migrations, canonical schema)."""
    return (resources.files("schema") / name).read_text()
