"""ASGI factory for ``rpmstore serve --workers N``: each worker process builds its own app.

uvicorn starts workers by import string, so the settings are read here, in each worker, the
same way ``main()`` reads them for a single-process server.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from rpmstore.localstack import stack
from rpmstore.logs import configure_logging
from rpmstore.settings import Settings


def app() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(database_url=stack.urls(settings).database_url)
