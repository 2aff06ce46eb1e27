"""The ingest hot path, function by function (pytest-benchmark), with ratios from the same run.

Every reading an HTTP request or MQTT message carries goes through, in this order:

1. ``decode_payload``: JSON bytes to columns (structural checks);
2. ``validate_readings``: catalogue, unit conversion, plausible range, device assignment, the
   accepted readings as columns (``ReadingColumns``, what the group committer takes);
3. ``encode``: the group committer writes a batch's binary COPY stream
   (``ReadingColumns.copy_stream``, numpy);
4. COPY itself: asyncpg ``copy_to_table(format="binary")`` of that stream into ``rpm.readings``.

Each step is timed per reading on the same payloads. Two baselines are measured in the same
run, so the ratios mean the same thing on any machine: ``json.loads`` of the same bytes (the
floor of any JSON decoder written in Python) and the COPY of the same readings (what the
database costs per reading). ``decode + validate + encode ÷ COPY`` says how much of a reading's
cost is Python in the ingesting process against PostgreSQL. Results go to
``reports/bench-hot-paths.json``; ``benchmarks/report.py`` merges every such file.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingest import payload as payload_module
from ingest.catalogue import Catalogue
from ingest.committer import READING_COLUMNS
from ingest.devices import Assignment, DeviceContext
from ingest.directory import load_catalogue
from ingest.payload import decode_payload
from ingest.store import ReadingColumns
from ingest.validation import validate_readings
from tests.conftest import DatabaseFactory, PgServer

pytestmark = pytest.mark.benchmark

REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench-hot-paths.json"
BIG = 500  # readings per payload of a gateway or a device catching up (the ingest benchmark's)
COPY_ROWS = 5000  # the group committer's default batch size
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
DEVICE = uuid.UUID("00000000-0000-4000-8000-000000000001")
PATIENT = uuid.UUID("00000000-0000-4000-8000-000000000002")

# Seconds per call (median), filled by the tests and written once by the module fixture.
_MEDIANS: dict[str, float] = {}
_READINGS: dict[str, int] = {}


def _item(n: int) -> dict[str, Any]:
    """A mix like the ward's: SpO2, heart rate, BP panels, glucose in mmol/L, temperature in
    [degF]; RFC 3339 times with an offset and epoch milliseconds; client ids."""
    at = T0 + timedelta(seconds=n)
    time: str | int = (
        at.astimezone(timezone(timedelta(hours=1))).isoformat(timespec="milliseconds")
        if n % 3
        else int(at.timestamp() * 1000)
    )
    kind = n % 5
    if kind == 0:
        body: dict[str, Any] = {"metric": "spo2", "value": 90 + n % 10, "unit": "%"}
    elif kind == 1:
        body = {"metric": "8867-4", "value": 60 + n % 40, "unit": "/min"}
    elif kind == 2:
        body = {
            "metric": "blood_pressure",
            "systolic": 120 + n % 20,
            "diastolic": 80,
            "unit": "mm[Hg]",
        }
    elif kind == 3:
        body = {"metric": "glucose_cgm", "value": 5.5 + (n % 20) / 10, "unit": "mmol/L"}
    else:
        body = {"metric": "body_temperature", "value": 98.0 + (n % 10) / 10, "unit": "[degF]"}
    return {**body, "time": time, "id": f"r-{n}"}


def _payload(count: int, start: int = 0) -> bytes:
    items = [_item(n) for n in range(start, start + count)]
    return json.dumps({"device_id": str(DEVICE), "readings": items}).encode()


def _rows_of(raw: bytes) -> int:
    """Stored rows a payload gives (a BP panel is two)."""
    return sum(2 if "systolic" in r else 1 for r in json.loads(raw)["readings"])


@pytest.fixture(scope="module", autouse=True)
def _write_report() -> Iterator[None]:
    yield
    if not _MEDIANS:
        return
    per_reading_us = {name: _MEDIANS[name] / _READINGS[name] * 1e6 for name in _MEDIANS}
    result: dict[str, Any] = {
        "readings_per_payload": BIG,
        "copy_rows": COPY_ROWS,
        "per_reading_us": {k: round(v, 3) for k, v in per_reading_us.items()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ratios: dict[str, float] = {}
    if {"decode", "json_loads"} <= per_reading_us.keys():
        ratios["decode_to_json_loads"] = per_reading_us["decode"] / per_reading_us["json_loads"]
    if {"decode", "decode_via_reference"} <= per_reading_us.keys():
        # Below 1: orjson plus the colon count beats refusing repeats with json's hook.
        ratios["decode_to_decode_via_reference"] = (
            per_reading_us["decode"] / per_reading_us["decode_via_reference"]
        )
    if "copy" in per_reading_us:
        copy = per_reading_us["copy"]
        for name in ("decode", "validate", "encode", "decode_validate_small"):
            if name in per_reading_us:
                ratios[f"{name}_to_copy"] = per_reading_us[name] / copy
        if {"decode", "validate", "encode"} <= per_reading_us.keys():
            python = sum(per_reading_us[k] for k in ("decode", "validate", "encode"))
            ratios["python_per_reading_to_copy"] = python / copy
    result["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")


def _record(benchmark: BenchmarkFixture, name: str, readings: int) -> None:
    stats = benchmark.stats
    assert stats is not None, "the benchmark ran"
    _MEDIANS[name] = float(stats.stats.median)
    _READINGS[name] = readings


@pytest.fixture(scope="module")
def catalogue(database_factory_module: DatabaseFactory, migrated_template: str) -> Catalogue:
    url = database_factory_module.clone(migrated_template)

    async def load() -> Catalogue:
        conn = await asyncpg.connect(url)
        try:
            return await load_catalogue(conn)
        finally:
            await conn.close()

    return asyncio.run(load())


@pytest.fixture(scope="module")
def database_factory_module(pg_server: PgServer) -> Iterator[DatabaseFactory]:
    """Like ``database_factory``, for module-scoped fixtures."""
    factory = DatabaseFactory(pg_server)
    yield factory
    factory.drop_all()


DEVICE_CONTEXT = DeviceContext(
    DEVICE, "active", (Assignment(T0 - timedelta(days=1), None, PATIENT),)
)


def test_json_loads_baseline(benchmark: BenchmarkFixture) -> None:
    raw = _payload(BIG)
    result = benchmark(json.loads, raw)
    assert len(result["readings"]) == BIG
    _record(benchmark, "json_loads", _rows_of(raw))


def test_decode_via_reference_parser_baseline(benchmark: BenchmarkFixture) -> None:
    """decode_payload as it would be without orjson and the colon count: the standard
    library's parse, whose object_pairs_hook refuses repeated members, on every payload. The
    hand-written fast path is worth keeping only while ``decode`` beats this in the same run."""
    raw = _payload(BIG)

    def decode_via_reference() -> Any:
        # Private on purpose: this is the alternative implementation, not an API.
        document = payload_module._parse_reference(raw)
        return payload_module._check_document(document, require_device_id=True)

    decoded = benchmark(decode_via_reference)
    assert len(decoded.readings) == BIG and decoded.errors == []
    _record(benchmark, "decode_via_reference", _rows_of(raw))


def test_decode_payload(benchmark: BenchmarkFixture) -> None:
    raw = _payload(BIG)
    decoded = benchmark(decode_payload, raw, require_device_id=True)
    assert len(decoded.readings) == BIG and decoded.errors == []
    _record(benchmark, "decode", _rows_of(raw))


def _validator(catalogue: Catalogue, raw: bytes) -> Callable[[], ReadingColumns]:
    decoded = decode_payload(raw)
    received = datetime.now(UTC)

    def validate() -> ReadingColumns:
        return validate_readings(
            decoded, device=DEVICE_CONTEXT, catalogue=catalogue, received_at=received
        ).columns

    return validate


def test_validate_readings(benchmark: BenchmarkFixture, catalogue: Catalogue) -> None:
    raw = _payload(BIG)
    accepted = benchmark(_validator(catalogue, raw))
    assert len(accepted) == _rows_of(raw), "every reading of the mix is valid"  # as columns
    _record(benchmark, "validate", _rows_of(raw))


def test_decode_and_validate_a_device_payload(
    benchmark: BenchmarkFixture, catalogue: Catalogue
) -> None:
    """The ward's common case: one device, one or two readings per request or message."""
    raw = _payload(2, start=1)  # heart rate and a BP panel: three rows
    received = datetime.now(UTC)

    def both() -> ReadingColumns:
        decoded = decode_payload(raw, require_device_id=True)
        return validate_readings(
            decoded, device=DEVICE_CONTEXT, catalogue=catalogue, received_at=received
        ).columns

    accepted = benchmark(both)
    assert len(accepted) == 3
    _record(benchmark, "decode_validate_small", 3)


def _validated(catalogue: Catalogue, rows: int) -> ReadingColumns:
    parts: list[ReadingColumns] = []
    start = 0
    while sum(len(p) for p in parts) < rows:
        parts.append(_validator(catalogue, _payload(BIG, start))())
        start += BIG
    return ReadingColumns.concat(parts).rows(0, rows)


def test_encode(benchmark: BenchmarkFixture, catalogue: Catalogue) -> None:
    """Batch building: the binary COPY stream of one group-commit batch."""
    columns = _validated(catalogue, COPY_ROWS)
    stream = benchmark(columns.copy_stream, 1)
    assert stream.startswith(b"PGCOPY\n\xff\r\n\x00") and len(columns) == COPY_ROWS
    _record(benchmark, "encode", COPY_ROWS)


def test_copy(
    benchmark: BenchmarkFixture,
    catalogue: Catalogue,
    database_factory: DatabaseFactory,
    migrated_template: str,
) -> None:
    """Binary COPY of one batch into the hypertable with its indexes; each round is rolled
    back, so every round writes into the same empty table."""
    url = database_factory.clone(migrated_template)
    stream = memoryview(_validated(catalogue, COPY_ROWS).copy_stream(1))
    loop = asyncio.new_event_loop()
    conn: asyncpg.Connection = loop.run_until_complete(asyncpg.connect(url))

    async def copy_once() -> None:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.copy_to_table(
                "readings",
                schema_name="rpm",
                source=stream,
                columns=READING_COLUMNS,
                format="binary",
            )
        finally:
            await transaction.rollback()

    try:
        loop.run_until_complete(copy_once())  # warm: chunk creation, plan caches
        benchmark.pedantic(  # type: ignore[no-untyped-call]  # pytest-benchmark: untyped
            lambda: loop.run_until_complete(copy_once()), rounds=15, iterations=1
        )
        stored = loop.run_until_complete(conn.fetchval("SELECT count(*) FROM rpm.readings"))
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
    assert stored == 0, "every round was rolled back"
    _record(benchmark, "copy", COPY_ROWS)
