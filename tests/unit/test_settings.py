"""Settings come from the environment (12-factor)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rpmstore.settings import Settings


def test_database_and_broker_urls_use_the_conventional_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@db/x")
    monkeypatch.setenv("MQTT_URL", "mqtt://b@broker:1883")
    monkeypatch.setenv("RPMSTORE_HOME", "/srv/rpmstore")
    monkeypatch.setenv("RPMSTORE_PG_PORT", "6543")
    settings = Settings()
    assert settings.database_url == "postgresql://a@db/x"
    assert settings.mqtt_url == "mqtt://b@broker:1883"
    assert settings.home == Path("/srv/rpmstore")
    assert settings.pg_port == 6543


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RPMSTORE_PG_PORT", "70000"),
        ("RPMSTORE_STACK", "kubernetes"),
        ("RPMSTORE_INSTANCE", "../x"),
    ],
)
def test_invalid_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
