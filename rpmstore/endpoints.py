"""Where the servers are: explicit settings first, the embedded local stack only for the rest.

A production process (``serve --role api`` with ``DATABASE_URL`` and ``API_DATABASE_URL``,
``serve --role ingest`` or ``ingest mqtt`` with theirs) never reads the local stack's state:
it is imported only when a URL is missing, which is the developer's ``rpmstore db up`` case.
"""

from __future__ import annotations

from rpmstore.db_transport import check_database_url
from rpmstore.localstack.errors import StackNotRunningError
from rpmstore.localstack.model import StackUrls
from rpmstore.settings import Settings


def _local(settings: Settings) -> StackUrls | None:
    from rpmstore.localstack import stack  # only when a setting is missing (see the docstring)

    return stack.local_urls(settings)


def database_url(settings: Settings) -> str:
    """The owner role's URL: ``DATABASE_URL``, else the local stack's."""
    if settings.database_url:
        return check_database_url(
            settings.database_url, allow_unverified=settings.database_allow_unverified
        )
    local = _local(settings)
    if local is None:
        raise StackNotRunningError(
            "no database configured: set DATABASE_URL to an existing server, "
            "or run 'rpmstore db up' for the embedded stack"
        )
    return local.database_url


def api_database_url(settings: Settings) -> str | None:
    """The clinician API's URL (role rpmstore_api): ``API_DATABASE_URL``, else the local stack's."""
    if settings.api_database_url:
        return check_database_url(
            settings.api_database_url,
            allow_unverified=settings.database_allow_unverified,
            setting="API_DATABASE_URL",
        )
    local = _local(settings)
    return local.api_database_url if local else None


def mqtt_url(settings: Settings) -> str:
    """The ingestor's broker URL: ``MQTT_URL``, else the local stack's."""
    if settings.mqtt_url:
        return settings.mqtt_url
    local = _local(settings)
    if local is None:
        raise StackNotRunningError(
            "no broker configured: set MQTT_URL to an existing broker, "
            "or run 'rpmstore db up' for the embedded stack"
        )
    return local.mqtt_url


def jwt_secret(settings: Settings) -> str | None:
    """The HS256 secret of clinician tokens: ``RPMSTORE_JWT_SECRET``, else the local stack's
    generated one, only when the database is the local stack's too; None: there is none."""
    from rpmstore.localstack import stack

    if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        return settings.jwt_secret.get_secret_value()
    if settings.database_url:
        return None  # explicit servers: never read the developer's stack (see the docstring)
    return stack.jwt_secret(settings, _local(settings))


def stack_urls(settings: Settings) -> StackUrls:
    """Every URL, for the developer commands (``db url``, ``demo``, ``simulate``)."""
    from rpmstore.localstack import stack

    return stack.urls(settings)
