"""Process settings, read from the environment once in ``main()`` and passed down (12-factor)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
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
    # The clinician API's connection: role rpmstore_api, scoped by row-level security. The
    # embedded stack supplies it when unset.
    api_database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("API_DATABASE_URL", "RPMSTORE_API_DATABASE_URL"),
    )
    # Accept a DATABASE_URL off loopback without sslmode=verify-full (rpmstore/db_transport.py):
    # only for a network that is private by other means.
    database_allow_unverified: bool = False
    # No default on purpose: a secret in the source is a secret everyone has. Unset, the
    # embedded stack's generated one is used (when the database is the stack's too); with
    # neither, `rpmstore serve` refuses to start (rpmstore/endpoints.py: jwt_secret).
    jwt_secret: SecretStr | None = None
    # HS256 with jwt_secret, or RS256/ES256 with jwt_public_key (PEM) from the identity provider.
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_public_key: str | None = None
    jwt_issuer: str = "rpmstore"
    jwt_audience: str = "rpmstore-api"
    home: Path = Field(default_factory=_default_home)
    stack: Literal["auto", "docker", "chroot"] = "auto"
    # Several embedded stacks can share one cached Debian root under different instance names.
    instance: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    pg_port: int = Field(default=55432, ge=1, le=65535)
    mqtt_port: int = Field(default=51883, ge=1, le=65535)
    # The embedded broker's TLS listeners (docs/operations/tls.md): passwords over TLS, and
    # device certificates (mutual TLS). Both on loopback, like every port of the stack.
    mqtt_tls_port: int = Field(default=58883, ge=1, le=65535)
    mqtt_mtls_port: int = Field(default=58884, ge=1, le=65535)
    # Plain mqtt:// is refused to any host but loopback; true only for a network private by
    # other means (a compose network, a VPN). See ingest/transport.py.
    mqtt_allow_plaintext: bool = False
    # Which routes `rpmstore serve` mounts: all, device ingest only, or the clinician API only
    # (run ingest and api as separate services so a device flood cannot starve clinicians).
    serve_role: Literal["all", "ingest", "api"] = "all"
    # HTTPS for `rpmstore serve` (PEM files; the key readable by the server's user only).
    # Without them serve listens on loopback only, unless http_allow_plaintext says a
    # TLS-terminating proxy in front does the encryption (docs/operations/tls.md).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    http_allow_plaintext: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    migrate_lock_timeout_s: float = Field(default=30.0, ge=0)
    # Names the ingestor's persistent MQTT session: keep it stable across restarts, distinct
    # between ingestor processes. Default: rpmstore-ingest-<hostname>.
    mqtt_client_id: str | None = None
    mqtt_group: str = "rpmstore-ingest"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Limits at the HTTP edge (api/edge.py, docs/operations/edge-limits.md); a rate of 0 turns
    # its limit off. The whole body must arrive within the timeout of the headers: a largest
    # readings payload (256 kB) takes about 21 s at 100 kbit/s, a slow cellular link. A
    # device gets 10 requests a second, bursts of 50: ample for a device catching up after an
    # outage (up to 1,000 readings a request), far below a runaway one. Each 401 costs the
    # client address a token: 50 at once, then one a second.
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    http_device_rate_per_s: float = Field(default=10.0, ge=0)
    http_device_burst: int = Field(default=50, ge=1)
    http_auth_failure_rate_per_s: float = Field(default=1.0, ge=0)
    http_auth_failure_burst: int = Field(default=50, ge=1)
    # Rollups (jobs/rollups.py): buckets older than the raw horizon are never recomputed from
    # raw readings (keep it shorter than raw retention, or a refresh could erase rollups whose
    # raw chunks were dropped); the newest `lag` stays aggregated on the fly.
    rollup_raw_horizon: timedelta = Field(default=timedelta(days=30), ge=timedelta(days=2))
    rollup_refresh_lag: timedelta = Field(default=timedelta(minutes=1), ge=timedelta(0))
    # The MQTT ingestor runs the missing-data alert sweep this often (seconds); 0: it does not
    # (run `rpmstore alerts sweep --loop` instead).
    alert_sweep_interval_s: float = Field(default=60.0, ge=0)
    # Ingesting processes evaluate alert rules themselves, right after each commit (from the
    # alert outbox their batches write). False: they only write the outbox, and
    # `rpmstore alerts run` evaluates it (one more service, CPU taken off the ingest processes).
    alerts_inline: bool = True
    # Retention (rpmstore retention run / archive restore): where archives go (a folder or any
    # fsspec URL; default $RPMSTORE_HOME/archive), who the ledger names as operator (default:
    # the OS user), and how long a drop may wait for a lock before backing off (ingest must not
    # queue behind it for longer).
    archive_url: str | None = None
    retention_operator: str | None = None
    retention_lock_timeout_ms: int = Field(default=500, ge=1)
