"""Application factory: pools and the ingest runtime are created here and opened in the lifespan.

Two connections to the database, on purpose:
- device ingest (``POST /v1/readings``) writes with ``database_url``, the trusted ingest path;
- every clinician, ops and admin route runs on ``api_database_url``, the rpmstore_api role,
  which owns nothing and cannot bypass row-level security (checked at start-up).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import AsyncConnectionPool

from api.access import NotVisibleError, check_api_role
from api.auth import AuthConfig
from api.routes import admin, alerts, audit, health, patients, readings
from ingest import IngestLimits, open_ingest_runtime

log = logging.getLogger(__name__)


def create_app(
    *,
    database_url: str,
    api_database_url: str,
    auth: AuthConfig,
    pool_max_size: int = 10,
    ingest_limits: IngestLimits | None = None,
) -> FastAPI:
    """Build the API for one database; nothing connects until the app starts."""
    pool = AsyncConnectionPool(
        database_url, open=False, min_size=1, max_size=pool_max_size, name="api"
    )
    api_pool = AsyncConnectionPool(
        api_database_url, open=False, min_size=1, max_size=pool_max_size, name="api-scoped"
    )
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        await api_pool.open(wait=True, timeout=30)
        app.state.pool = pool
        app.state.api_pool = api_pool
        app.state.auth = auth
        try:
            await check_api_role(api_pool)
            async with open_ingest_runtime(
                database_url, source="http", registry=registry, limits=ingest_limits
            ) as ingest:
                app.state.ingest = ingest
                yield
        finally:
            await api_pool.close()
            await pool.close()

    app = FastAPI(
        title="rpmstore",
        summary="Remote patient monitoring store: device ingest and clinician API.",
        version="0.2.0",
        lifespan=lifespan,
    )
    for router in (
        health.router,
        readings.router,
        patients.router,
        alerts.router,
        admin.router,
        audit.router,
    ):
        app.include_router(router)

    @app.exception_handler(NotVisibleError)
    async def not_visible(_request: Request, exc: NotVisibleError) -> JSONResponse:
        # The same answer whether the object does not exist or belongs to another team.
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(psycopg.errors.DataError)
    async def refused_value(_request: Request, exc: psycopg.errors.DataError) -> JSONResponse:
        # A value the input models let through but the database refuses (SQLSTATE class 22):
        # the client's input, so a 422 that says what, never a 500.
        log.warning("database refused a value: %s", exc, extra={"sqlstate": exc.sqlstate})
        detail = exc.diag.message_primary or "value not accepted"
        return JSONResponse(
            {"detail": [{"loc": ["body"], "msg": detail, "type": "value_error"}]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(psycopg.errors.IntegrityError)
    async def conflicting(_request: Request, exc: psycopg.errors.IntegrityError) -> JSONResponse:
        # A change that contradicts stored data (a duplicate, a missing reference...).
        constraint = exc.diag.constraint_name or exc.sqlstate
        return JSONResponse(
            {"detail": f"conflicts with stored data ({constraint})"},
            status_code=status.HTTP_409_CONFLICT,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
