"""Application factory: pools and the ingest runtime are created here and opened in the lifespan.

Two connections to the database, on purpose:
- device ingest (``POST /v1/readings``) writes with ``database_url``, the trusted ingest path;
- every clinician, ops and admin route runs on ``api_database_url``, the rpmstore_api role,
  which owns nothing and cannot bypass row-level security (checked at start-up).

One process can serve everything (role ``all``), or a deployment runs the two halves as
separate services so that a flood of device payloads (CPU-heavy JSON decoding in the event
loop) cannot queue clinicians' requests behind it:
- ``ingest``: ``POST /v1/readings`` plus health and metrics; no rpmstore_api connection;
- ``api``: the clinician, admin, audit and FHIR routes plus health and metrics. It still opens
  an ingest runtime, only for the FHIR import (an admin's bundle is stored through ingest).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version
from typing import Any, Literal, get_args

import psycopg
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import AsyncConnectionPool

from alerting import AlertingOptions
from api.access import NotVisibleError, check_api_role
from api.auth import AuthConfig
from api.edge import EdgeLimits, install_edge
from api.errors import install_error_handlers, safe_text
from api.fhir.resources import outcome_response
from api.job_stats import TimescaleJobStats
from api.routes import admin, alerts, audit, fhir, health, patients, readings
from ingest import IngestLimits, open_ingest_runtime

log = logging.getLogger(__name__)

ServeRole = Literal["all", "ingest", "api"]
SERVE_ROLES: tuple[ServeRole, ...] = get_args(ServeRole)
# The clinician side: everything that runs as rpmstore_api under row-level security.
_API_ROUTERS = (patients.router, alerts.router, admin.router, audit.router, fhir.router)


def create_app(
    *,
    database_url: str,
    api_database_url: str | None,
    auth: AuthConfig | None,
    role: ServeRole = "all",
    pool_max_size: int = 10,
    ingest_limits: IngestLimits | None = None,
    alerting: AlertingOptions | None = None,
    edge_limits: EdgeLimits | None = None,
) -> FastAPI:
    """Build the API for one database; nothing connects until the app starts.

    ``role`` chooses the routes served (see the module docstring); ``api_database_url`` and
    ``auth`` may be None only for the ``ingest`` role, which never acts for a clinician.
    """
    if role not in SERVE_ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(SERVE_ROLES)}")
    serves_api = role != "ingest"
    if serves_api and api_database_url is None:
        raise ValueError(f"role {role!r} needs api_database_url (the rpmstore_api role)")
    if serves_api and auth is None:
        raise ValueError(f"role {role!r} needs auth (a key to verify clinician tokens)")
    pool = AsyncConnectionPool(
        database_url, open=False, min_size=1, max_size=pool_max_size, name="api"
    )
    api_pool = (
        AsyncConnectionPool(
            api_database_url, open=False, min_size=1, max_size=pool_max_size, name="api-scoped"
        )
        if serves_api and api_database_url is not None
        else None
    )
    registry = CollectorRegistry()
    # The clinician API is the scrape target for database-side jobs (once per deployment:
    # the ingest role leaves them out).
    job_stats = TimescaleJobStats() if serves_api else None
    if job_stats is not None:
        registry.register(job_stats)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await pool.open(wait=True, timeout=30)
            stack.push_async_callback(pool.close)
            app.state.pool = pool
            app.state.auth = auth
            if api_pool is not None:
                await api_pool.open(wait=True, timeout=30)
                stack.push_async_callback(api_pool.close)
                app.state.api_pool = api_pool
                await check_api_role(api_pool)
            app.state.ingest = await stack.enter_async_context(
                open_ingest_runtime(
                    database_url,
                    source="http",
                    registry=registry,
                    limits=ingest_limits,
                    alerting=alerting,
                )
            )
            log.info("serving", extra={"role": role})
            yield

    app = FastAPI(
        title="rpmstore",
        summary="Remote patient monitoring store: device ingest and clinician API.",
        # The package's own version (pyproject.toml), not a second copy that drifts.
        version=version("rpmstore"),
        lifespan=lifespan,
    )
    # Body timeout, content type, failed-auth and per-device budgets (api/edge.py).
    install_edge(app, edge_limits or EdgeLimits(), registry)
    app.include_router(health.router)
    if role != "api":
        app.include_router(readings.router)
    if serves_api:
        for router in _API_ROUTERS:
            app.include_router(router)

    install_error_handlers(app, is_fhir=fhir.is_fhir_request)

    _install_openapi(app)
    _install_database_error_handlers(app)
    _install_metrics(app, registry, job_stats, pool)
    return app


def _install_openapi(app: FastAPI) -> None:
    """FHIR operations document their OperationOutcome 400s, not FastAPI's 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = fhir.drop_validation_responses(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _install_database_error_handlers(app: FastAPI) -> None:
    """Answers for errors the database raises on the client's behalf: never a 500."""

    @app.exception_handler(NotVisibleError)
    async def not_visible(request: Request, exc: NotVisibleError) -> JSONResponse:
        # The same answer whether the object does not exist or belongs to another team.
        if fhir.is_fhir_request(request):
            return outcome_response(status.HTTP_404_NOT_FOUND, "not-found", str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(psycopg.errors.DataError)
    async def refused_value(request: Request, exc: psycopg.errors.DataError) -> JSONResponse:
        # A value the input models let through but the database refuses (SQLSTATE class 22):
        # the client's input, so a 422 that says what, never a 500. Routes check what they can
        # name themselves; this is the backstop, so it names only the part of the request.
        log.warning("database refused a value: %s", exc, extra={"sqlstate": exc.sqlstate})
        detail = safe_text(exc.diag.message_primary or str(exc) or "value not accepted")
        if fhir.is_fhir_request(request):
            return outcome_response(status.HTTP_400_BAD_REQUEST, "invalid", detail)
        where = "body" if request.method in ("POST", "PUT", "PATCH") else "query"
        return JSONResponse(
            {"detail": [{"loc": [where], "msg": detail, "type": "value_error"}]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(psycopg.errors.IntegrityError)
    async def conflicting(request: Request, exc: psycopg.errors.IntegrityError) -> JSONResponse:
        # A change that contradicts stored data (a duplicate, a missing reference...).
        detail = f"conflicts with stored data ({exc.diag.constraint_name or exc.sqlstate})"
        if fhir.is_fhir_request(request):
            return outcome_response(status.HTTP_409_CONFLICT, "conflict", detail)
        return JSONResponse({"detail": detail}, status_code=status.HTTP_409_CONFLICT)


def _install_metrics(
    app: FastAPI,
    registry: CollectorRegistry,
    job_stats: TimescaleJobStats | None,
    pool: AsyncConnectionPool,
) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if job_stats is not None:
            await job_stats.refresh(pool)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
