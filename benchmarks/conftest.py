"""Benchmarks use the test suite's real servers (own TimescaleDB cluster and Mosquitto)."""

from tests.conftest import (  # noqa: F401 - fixtures are found by name
    database_factory,
    debian_root,
    empty_template,
    jwt_secret_in_environment,
    migrated_template,
    mqtt_broker,
    pg_server,
)
