"""TimescaleDB's background jobs in /metrics, so ops see policies that fail or lag."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool

from api.job_stats import TimescaleJobStats
from schema.edition import detect_edition
from tests.apphelpers import make_app

FAILING_JOB = """
CREATE PROCEDURE public.job_that_fails(job_id integer, config jsonb) LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this job always fails';
END $$
"""


def needs_job_policies(conn: psycopg.Connection) -> None:
    if not detect_edition(conn).job_policies:
        pytest.skip(
            "Apache edition: no refresh policies or user jobs, only the telemetry job, "
            "which the series leave out"
        )


def samples(families: list[Metric], name: str) -> dict[str, float]:
    """``relation`` or ``proc_name`` label -> value, for one series name."""
    return {
        s.labels["relation"] or s.labels["proc_name"]: s.value
        for family in families
        for s in family.samples
        if s.name == name
    }


def test_metrics_show_each_refresh_policy_by_its_aggregate(
    db_url: str, api_db_url: str, conn: psycopg.Connection
) -> None:
    needs_job_policies(conn)
    with TestClient(make_app(db_url, api_db_url, role="api")) as client:
        families = list(text_string_to_metric_families(client.get("/metrics").text))
    runs = samples(families, "rpmstore_timescaledb_job_runs")
    policies = {"rpm.readings_1m", "rpm.readings_1h", "rpm.readings_1d"}
    assert policies <= runs.keys()
    failed = samples(families, "rpmstore_timescaledb_job_last_run_failed")
    assert policies <= failed.keys()
    assert all(value in (0.0, 1.0) for value in failed.values())


@pytest.mark.slow  # the scheduler starts a new database's jobs within about a minute
def test_a_failing_job_is_counted(db_url: str, conn: psycopg.Connection) -> None:
    """The scheduler runs a job that always fails; its failures and last state show."""
    needs_job_policies(conn)
    conn.execute(FAILING_JOB)
    row = conn.execute(
        "SELECT add_job('public.job_that_fails', interval '1 hour', initial_start => now())"
    ).fetchone()
    assert row is not None

    async def collect_until_failed() -> dict[str, float]:
        stats = TimescaleJobStats(max_age_s=0)
        async with AsyncConnectionPool(db_url, min_size=1, max_size=1) as pool:
            deadline = time.monotonic() + 120
            while True:
                await stats.refresh(pool)
                failures = {
                    s.labels["proc_name"]: s.value
                    for family in stats.collect()
                    for s in family.samples
                    if s.name == "rpmstore_timescaledb_job_failures"
                }
                if failures.get("job_that_fails", 0) >= 1 or time.monotonic() > deadline:
                    return failures
                await asyncio.sleep(0.5)

    failures = asyncio.run(collect_until_failed())
    assert failures.get("job_that_fails", 0) >= 1, failures


def test_metrics_answer_while_the_database_is_away() -> None:
    """A scrape never fails on the job catalogue: no database, no job series, no error."""
    stats = TimescaleJobStats(max_age_s=0)

    async def scrape() -> list[Metric]:
        pool = AsyncConnectionPool(
            "postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1, open=False
        )
        await pool.open(wait=False)
        try:
            await stats.refresh(pool)
        finally:
            await pool.close()
        return list(stats.collect())

    families = asyncio.run(scrape())
    assert [f.name for f in families] == [
        "rpmstore_timescaledb_job_runs",
        "rpmstore_timescaledb_job_failures",
        "rpmstore_timescaledb_job_last_run_failed",
        "rpmstore_timescaledb_job_seconds_since_success",
    ]
    assert all(not f.samples for f in families)
