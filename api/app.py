"""Application factory: the connection pool is created here and opened in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from api.routes import health


def create_app(*, database_url: str, pool_max_size: int = 10) -> FastAPI:
    """Build the API for one database; nothing connects until the app starts."""
    pool = AsyncConnectionPool(
        database_url, open=False, min_size=1, max_size=pool_max_size, name="api"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="rpmstore",
        summary="Remote patient monitoring store: device ingest and clinician API.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    return app
