"""The supported TimescaleDB range, decided from the version string the server reports."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from schema.edition import SUPPORTED_TIMESCALEDB, edition_from_row, is_supported_version


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("2.19.3", True),
        ("2.20.0", True),
        ("2.22.1", True),
        ("2.18.2", False),
        ("2.23.0-dev", False),
        ("3.0.0", False),
        ("garbage", False),
    ],
)
def test_supported_versions(version: str, supported: bool) -> None:
    assert is_supported_version(version) is supported


def test_the_range_covers_the_compose_pin() -> None:
    """The edition users deploy with ``docker compose up`` is one the suite is run on."""
    compose = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
    pins = re.findall(r"image:\s*timescale/timescaledb:(\d+\.\d+\.\d+)", compose)
    assert pins and all(is_supported_version(pin) for pin in pins)
    assert SUPPORTED_TIMESCALEDB[0] <= SUPPORTED_TIMESCALEDB[1]


def test_an_unsupported_version_is_logged_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="schema.edition"):
        edition = edition_from_row(("timescale", "2.30.0", "17.2"))
    assert edition.license == "timescale" and not edition.supported
    assert [r.getMessage() for r in caplog.records] == [
        "TimescaleDB version outside the tested range"
    ]
