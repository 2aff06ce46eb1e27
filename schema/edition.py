"""Which TimescaleDB features this database has, decided in one place.

The Apache-2 edition has hypertables, time_bucket and drop_chunks; continuous aggregates,
compression and job policies need the community (TSL) edition. Callers ask for a feature and
use the native one when present, else rpmstore's own equivalent.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

import psycopg

from schema.sql import queries

License = Literal["apache", "timescale"]

# The TimescaleDB minor versions the suite runs on (Debian trixie's 2.19 with the Apache
# edition, the compose pin 2.22 with the full one). Catalogue views change shape between
# minors (2.20 renamed the hypertable a refresh policy reports), so a version outside the
# range works only as far as nothing rpmstore reads has changed: it is logged, not refused.
SUPPORTED_TIMESCALEDB = ((2, 19), (2, 22))

log = logging.getLogger(__name__)


class TimescaleMissingError(RuntimeError):
    """The database has no TimescaleDB extension (or it is not preloaded)."""


@dataclass(frozen=True)
class Edition:
    license: License
    timescaledb_version: str
    postgres_version: str

    @property
    def supported(self) -> bool:
        """Whether the TimescaleDB version is one the suite is run on."""
        return is_supported_version(self.timescaledb_version)

    @property
    def continuous_aggregates(self) -> bool:
        return self.license == "timescale"

    @property
    def compression(self) -> bool:
        return self.license == "timescale"

    @property
    def job_policies(self) -> bool:
        return self.license == "timescale"


def is_supported_version(version: str) -> bool:
    """``version`` as TimescaleDB reports it (``2.22.1``, ``2.23.0-dev``) is in range."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return False
    minor = (int(match[1]), int(match[2]))
    lowest, highest = SUPPORTED_TIMESCALEDB
    return lowest <= minor <= highest


@cache
def _warn_unsupported(version: str) -> None:
    # Once per version and process: detect_edition runs on every refresh and retention run.
    lowest, highest = SUPPORTED_TIMESCALEDB
    log.warning(
        "TimescaleDB version outside the tested range",
        extra={
            "timescaledb_version": version,
            "supported": f"{lowest[0]}.{lowest[1]} to {highest[0]}.{highest[1]}",
        },
    )


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
    edition = Edition(
        license=parse_license(row[0]),
        timescaledb_version=str(row[1]),
        postgres_version=str(row[2]),
    )
    if not edition.supported:
        _warn_unsupported(edition.timescaledb_version)
    return edition
