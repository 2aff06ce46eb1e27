"""Which TimescaleDB features this database has, decided in one place.

The Apache-2 edition has hypertables, time_bucket and drop_chunks; continuous aggregates,
compression and job policies need the community (TSL) edition. Callers ask for a feature and
use the native one when present, else rpmstore's own equivalent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import psycopg

from schema.sql import queries

License = Literal["apache", "timescale"]


class TimescaleMissingError(RuntimeError):
    """The database has no TimescaleDB extension (or it is not preloaded)."""


@dataclass(frozen=True)
class Edition:
    license: License
    timescaledb_version: str
    postgres_version: str

    @property
    def continuous_aggregates(self) -> bool:
        return self.license == "timescale"

    @property
    def compression(self) -> bool:
        return self.license == "timescale"

    @property
    def job_policies(self) -> bool:
        return self.license == "timescale"


def parse_license(raw: str) -> License:
    if raw == "apache":
        return "apache"
    if raw == "timescale":
        return "timescale"
    raise TimescaleMissingError(f"unrecognised timescaledb.license {raw!r}")


def detect_edition(conn: psycopg.Connection) -> Edition:
    """The edition of the database ``conn`` is connected to."""
    return edition_from_row(conn.execute(queries("edition")["detect"]).fetchone())


async def detect_edition_async(conn: psycopg.AsyncConnection) -> Edition:
    cursor = await conn.execute(queries("edition")["detect"])
    return edition_from_row(await cursor.fetchone())


def edition_from_row(row: tuple[str | None, ...] | None) -> Edition:
    if row is None or row[1] is None:
        raise TimescaleMissingError(
            "TimescaleDB is not installed in this database: a superuser must run "
            "CREATE EXTENSION timescaledb (rpmstore db up does this for the embedded stack)"
        )
    if row[0] is None:
        raise TimescaleMissingError(
            "TimescaleDB is installed but not preloaded: add timescaledb to "
            "shared_preload_libraries and restart PostgreSQL"
        )
    return Edition(
        license=parse_license(row[0]),
        timescaledb_version=str(row[1]),
        postgres_version=str(row[2]),
    )
