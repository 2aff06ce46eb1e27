"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, cast

import psycopg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from api.auth import AuthConfig, AuthError, Principal
from ingest import IngestRuntime


async def _connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    pool = cast(AsyncConnectionPool, request.app.state.pool)
    async with pool.connection() as conn:
        yield conn


ConnDep = Annotated[psycopg.AsyncConnection, Depends(_connection)]


async def _ingest(request: Request) -> IngestRuntime:
    return cast(IngestRuntime, request.app.state.ingest)


IngestDep = Annotated[IngestRuntime, Depends(_ingest)]


_bearer = HTTPBearer(auto_error=False, description="A clinician, ops or admin JWT")


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    config = cast(AuthConfig, request.app.state.auth)
    try:
        return config.verify(credentials.credentials)
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            exc.detail,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


def _require(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if principal.roles.isdisjoint(roles):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this route needs one of the roles: {', '.join(roles)}"
            )
        return principal

    return check


# Clinicians see their care teams' patients; admins see every patient (registration, audit).
CareUser = Annotated[Principal, Depends(_require("clinician", "admin"))]
AdminUser = Annotated[Principal, Depends(_require("admin"))]


async def _api_pool(request: Request) -> AsyncConnectionPool[Any]:
    return cast(AsyncConnectionPool[Any], request.app.state.api_pool)


ApiPoolDep = Annotated[AsyncConnectionPool[Any], Depends(_api_pool)]


async def route_template(request: Request) -> str:
    """The route's path template (``/v1/patients/{patient_id}``), for the audit log."""
    route = request.scope.get("route")
    return str(getattr(route, "path", request.url.path))


RouteDep = Annotated[str, Depends(route_template)]
