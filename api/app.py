"""Application factory: pools and the ingest runtime are created here and opened in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import AsyncConnectionPool

from api.routes import health, readings
from ingest import IngestLimits, open_ingest_runtime


def create_app(
    *, database_url: str, pool_max_size: int = 10, ingest_limits: IngestLimits | None = None
) -> FastAPI:
    """Build the API for one database; nothing connects until the app starts."""
    pool = AsyncConnectionPool(
        database_url, open=False, min_size=1, max_size=pool_max_size, name="api"
    )
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            async with open_ingest_runtime(
                database_url, source="http", registry=registry, limits=ingest_limits
            ) as ingest:
                app.state.ingest = ingest
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
    app.include_router(readings.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
