"""ASGI factory for ``rpmstore serve --workers N``: each worker process builds its own app.

uvicorn starts workers by import string, so the settings are read here, in each worker, the
same way ``main()`` reads them for a single-process server (the role too:
``RPMSTORE_SERVE_ROLE``, which ``rpmstore serve --role`` sets for its workers).
"""

from __future__ import annotations

from typing import TypedDict

from fastapi import FastAPI

from alerting import AlertingOptions
from api.app import ServeRole, create_app
from api.auth import AuthConfig
from api.edge import EdgeLimits
from rpmstore import endpoints
from rpmstore.localstack.errors import StackNotRunningError
from rpmstore.logs import configure_logging
from rpmstore.settings import Settings


class AppSettings(TypedDict):
    database_url: str
    api_database_url: str | None
    auth: AuthConfig | None
    role: ServeRole
    alerting: AlertingOptions
    edge_limits: EdgeLimits


def app_settings(settings: Settings, role: ServeRole | None = None) -> AppSettings:
    """What ``create_app`` needs, from the settings (the local stack fills in missing URLs and
    the JWT secret); refuses to go on without a key to verify clinician tokens.

    ``role`` defaults to the ``serve_role`` setting; only the ``ingest`` role does without
    the rpmstore_api URL.
    """
    role = role or settings.serve_role
    # Checked first: no key is the one refusal that must not depend on finding a database.
    # The ingest role verifies device tokens only, so it is given no clinician-token key.
    auth = auth_config(settings) if role != "ingest" else None
    database_url = endpoints.database_url(settings)
    api_database_url = endpoints.api_database_url(settings)
    if api_database_url is None and role != "ingest":
        raise StackNotRunningError(
            "no API_DATABASE_URL: set it to the rpmstore_api role's URL, or run 'rpmstore db up'"
        )
    return AppSettings(
        database_url=database_url,
        api_database_url=api_database_url,
        auth=auth,
        role=role,
        # No sweep here: the MQTT ingestor or `rpmstore alerts run` sweeps.
        alerting=AlertingOptions(enabled=settings.alerts_inline),
        edge_limits=edge_limits(settings),
    )


def edge_limits(settings: Settings) -> EdgeLimits:
    return EdgeLimits(
        body_timeout_s=settings.http_body_timeout_s,
        device_rate_per_s=settings.http_device_rate_per_s,
        device_burst=settings.http_device_burst,
        auth_failure_rate_per_s=settings.http_auth_failure_rate_per_s,
        auth_failure_burst=settings.http_auth_failure_burst,
    )


def auth_config(settings: Settings) -> AuthConfig:
    """The clinician-token verifier; refuses (``InsecureAuthConfigError``) without a key."""
    return AuthConfig.build(
        secret=endpoints.jwt_secret(settings) if settings.jwt_algorithm == "HS256" else None,
        algorithm=settings.jwt_algorithm,
        public_key=settings.jwt_public_key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


def app() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(**app_settings(settings))
