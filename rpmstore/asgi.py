"""ASGI factory for ``rpmstore serve --workers N``: each worker process builds its own app.

uvicorn starts workers by import string, so the settings are read here, in each worker, the
same way ``main()`` reads them for a single-process server.
"""

from __future__ import annotations

from typing import TypedDict

from fastapi import FastAPI

from api.app import create_app
from api.auth import AuthConfig
from rpmstore.localstack import stack
from rpmstore.localstack.errors import StackNotRunningError
from rpmstore.logs import configure_logging
from rpmstore.settings import DEV_JWT_SECRET, Settings


class AppSettings(TypedDict):
    database_url: str
    api_database_url: str
    auth: AuthConfig


def app_settings(settings: Settings) -> AppSettings:
    """What ``create_app`` needs, from the settings and the local stack; refuses unsafe auth."""
    urls = stack.urls(settings)
    if urls.api_database_url is None:
        raise StackNotRunningError(
            "no API_DATABASE_URL: set it to the rpmstore_api role's URL, or run 'rpmstore db up'"
        )
    return AppSettings(
        database_url=urls.database_url,
        api_database_url=urls.api_database_url,
        auth=auth_config(settings),
    )


def auth_config(settings: Settings) -> AuthConfig:
    return AuthConfig.build(
        environment=settings.environment,
        secret=settings.jwt_secret.get_secret_value(),
        dev_secret=DEV_JWT_SECRET,
        algorithm=settings.jwt_algorithm,
        public_key=settings.jwt_public_key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


def app() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(**app_settings(settings))
