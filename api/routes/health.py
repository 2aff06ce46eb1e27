"""Liveness and readiness probes for orchestrators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ConnDep
from schema.edition import detect_edition_async

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    postgres_version: str
    timescaledb_version: str
    timescaledb_edition: str


@router.get("/healthz")
async def healthz() -> Liveness:
    """The process is up (no dependencies are checked)."""
    return Liveness(status="ok")


@router.get("/readyz")
async def readyz(conn: ConnDep) -> Readiness:
    """The database answers and has TimescaleDB; reports versions and edition."""
    edition = await detect_edition_async(conn)
    return Readiness(
        status="ready",
        postgres_version=edition.postgres_version,
        timescaledb_version=edition.timescaledb_version,
        timescaledb_edition=edition.license,
    )
