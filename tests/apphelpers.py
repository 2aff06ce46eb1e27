"""Building the API app and clinician tokens the way the CLI does, for tests and benchmarks."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from fastapi import FastAPI

from api.app import create_app
from api.auth import AuthConfig, issue_token

# The suite's own deployment secret, new every run (there is no built-in one): tests/conftest.py
# hands it to every `rpmstore` process the suite starts as RPMSTORE_JWT_SECRET.
TEST_JWT_SECRET = secrets.token_urlsafe(32)

TEST_AUTH = AuthConfig.build(
    secret=TEST_JWT_SECRET,
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
        TEST_JWT_SECRET,
        subject=subject,
        roles=roles,
        care_teams=care_teams or [],
        **kwargs,
    )
    return {"Authorization": f"Bearer {token}"}
