"""Process settings, read from the environment once in ``main()`` and passed down (12-factor)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "rpmstore"


class Settings(BaseSettings):
    """Everything configurable about an rpmstore process.

    ``DATABASE_URL`` and ``MQTT_URL`` point rpmstore at existing servers; when they are unset the
    embedded local stack (``rpmstore db up``) supplies them.
    """

    model_config = SettingsConfigDict(
        env_prefix="RPMSTORE_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "RPMSTORE_DATABASE_URL")
    )
    mqtt_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MQTT_URL", "RPMSTORE_MQTT_URL")
    )
    home: Path = Field(default_factory=_default_home)
    stack: Literal["auto", "docker", "chroot"] = "auto"
    # Several embedded stacks can share one cached Debian root under different instance names.
    instance: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    pg_port: int = Field(default=55432, ge=1, le=65535)
    mqtt_port: int = Field(default=51883, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    migrate_lock_timeout_s: float = Field(default=30.0, ge=0)
    # Names the ingestor's persistent MQTT session: keep it stable across restarts, distinct
    # between ingestor processes. Default: rpmstore-ingest-<hostname>.
    mqtt_client_id: str | None = None
    mqtt_group: str = "rpmstore-ingest"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The MQTT ingestor runs the missing-data alert sweep this often (seconds); 0: it does not
    # (run `rpmstore alerts sweep --loop` instead).
    alert_sweep_interval_s: float = Field(default=60.0, ge=0)
