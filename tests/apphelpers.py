"""Building the API app and clinician tokens the way the CLI does, for tests and benchmarks."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI

from api.app import create_app
from api.auth import AuthConfig, issue_token
from rpmstore.settings import DEV_JWT_SECRET

TEST_AUTH = AuthConfig.build(
    environment="dev",
    secret=DEV_JWT_SECRET,
    dev_secret=DEV_JWT_SECRET,
    algorithm="HS256",
    public_key=None,
    issuer="rpmstore",
    audience="rpmstore-api",
)


def make_app(db_url: str, api_db_url: str, **kwargs: Any) -> FastAPI:
    return create_app(database_url=db_url, api_database_url=api_db_url, auth=TEST_AUTH, **kwargs)


def bearer(
    subject: str, roles: list[str], care_teams: list[uuid.UUID] | None = None, **kwargs: Any
) -> dict[str, str]:
    token = issue_token(
        TEST_AUTH,
        DEV_JWT_SECRET,
        subject=subject,
        roles=roles,
        care_teams=care_teams or [],
        **kwargs,
    )
    return {"Authorization": f"Bearer {token}"}
