"""Plain data describing a running stack, shared by its back ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["external", "docker", "chroot"]

OWNER_ROLE = "rpmstore"
# The clinician API's role: owns nothing, no BYPASSRLS; row-level security scopes it
# (schema/migrations/0006_access.up.sql grants to this name).
API_ROLE = "rpmstore_api"
DATABASE = "rpmstore"


@dataclass(frozen=True)
class StackUrls:
    """Connection URLs and secrets of the running stack: print them with care."""

    database_url: str
    admin_database_url: str | None
    mqtt_url: str
    mqtt_gateway_url: str | None
    api_database_url: str | None = None
    # The HS256 key of clinician tokens, generated per stack instance like its passwords;
    # None for existing servers (their deployment has its own).
    jwt_secret: str | None = None


@dataclass(frozen=True)
class ServerStatus:
    backend: Backend
    postgres_running: bool
    mosquitto_running: bool | None
