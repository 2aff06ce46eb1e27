"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from ingest import IngestRuntime


async def _connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    pool = cast(AsyncConnectionPool, request.app.state.pool)
    async with pool.connection() as conn:
        yield conn


ConnDep = Annotated[psycopg.AsyncConnection, Depends(_connection)]


def _ingest(request: Request) -> IngestRuntime:
    return cast(IngestRuntime, request.app.state.ingest)


IngestDep = Annotated[IngestRuntime, Depends(_ingest)]
