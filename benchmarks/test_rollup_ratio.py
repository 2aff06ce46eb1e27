"""Timeline queries from rollups against the same answers computed from raw readings.

One fresh database, loaded server-side with generate_series: PATIENTS patients x 2 metrics
(heart rate, SpO2), one reading every STEP_S seconds for DAYS days up to two minutes ago
(5.4 million readings by default). The rollups are refreshed (Apache edition: the refresher
materializes the rollup tables; TSL: the continuous aggregates), then for each query shape the
same timelines are asked, interleaved, of ``rpm.vitals_timeline`` and of an equivalent query
that aggregates the raw readings (same buckets, gap rows, aggregates), and both answers are
checked equal. Ratio = median raw latency / median rollup latency, measured in the same run:
in the server (every column aggregated there, one row back) and end to end (rows parsed by
psycopg). Results go to reports/bench-rollups.json and stdout.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from jobs.rollups import refresh_rollups
from schema.edition import detect_edition
from tests.conftest import DatabaseFactory

pytestmark = pytest.mark.benchmark

PATIENTS = int(os.environ.get("RPMSTORE_BENCH_ROLLUP_PATIENTS", "20"))
DAYS = int(os.environ.get("RPMSTORE_BENCH_ROLLUP_DAYS", "28"))
STEP_S = int(os.environ.get("RPMSTORE_BENCH_ROLLUP_STEP_S", "18"))
QUERIES = int(os.environ.get("RPMSTORE_BENCH_ROLLUP_QUERIES", "25"))
METRICS = (1, 4)  # heart_rate, spo2
REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench-rollups.json"
# (name, range, resolution): the trend views a clinician opens, longest first.
SHAPES = (
    ("28d_daily", timedelta(days=28), "1d"),
    ("28d_hourly", timedelta(days=28), "1h"),
    ("7d_hourly", timedelta(days=7), "1h"),
    ("24h_minutely", timedelta(hours=24), "1m"),
)
WIDTHS = {"1d": "24 hours", "1h": "1 hour", "1m": "1 minute"}

SERIES = """
CREATE TABLE bench_series AS
SELECT gen_random_uuid() AS device_id, p.patient_id, m.metric_id, random() * 6.28 AS phase
FROM (SELECT gen_random_uuid() AS patient_id FROM generate_series(1, %(patients)s)) p
CROSS JOIN unnest(%(metrics)s::smallint[]) AS m (metric_id)
"""
# One day of every series per statement: a diurnal curve plus noise, in each metric's range.
LOAD_DAY = """
INSERT INTO rpm.readings (measured_at, received_at, value, batch_id, device_id, patient_id,
                          metric_id)
SELECT t, t, round((CASE s.metric_id WHEN 1 THEN 72 + 12 * sin(x + s.phase) + random() * 8
                                     ELSE 96 + 2 * sin(x + s.phase) + random() * 2 END
                   )::numeric, 1)::float8,
       0, s.device_id, s.patient_id, s.metric_id
FROM bench_series s,
     generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 microsecond',
                     %(step)s * interval '1 second') AS t,
     LATERAL (SELECT extract(epoch FROM t)::float8 / 86400 * 6.28) AS c (x)
"""
# What rpm.vitals_timeline answers, computed from the raw readings instead of the rollups:
# every bucket overlapping [start, end), each aggregated over the whole bucket.
RAW_TIMELINE = """
SELECT g.b, coalesce(v.c, 0), v.lo, v.hi, v.s / v.c, v.last, v.last_at
FROM generate_series(time_bucket(%(width)s::interval, %(start)s::timestamptz),
                     %(end)s::timestamptz - interval '1 microsecond',
                     %(width)s::interval) AS g (b)
LEFT JOIN (
    SELECT time_bucket(%(width)s::interval, measured_at) AS b, count(*) AS c, sum(value) AS s,
           min(value) AS lo, max(value) AS hi,
           (max(ARRAY[date_part('epoch', measured_at - timestamptz 'epoch'), value]))[2] AS last,
           max(measured_at) AS last_at
    FROM rpm.readings
    WHERE patient_id = %(patient)s AND metric_id = %(metric)s
      AND measured_at >= time_bucket(%(width)s::interval, %(start)s::timestamptz)
      AND measured_at < time_bucket(%(width)s::interval,
                                    %(end)s::timestamptz - interval '1 microsecond')
                        + %(width)s::interval
    GROUP BY 1
) v ON v.b = g.b
ORDER BY g.b
"""
ROLLUP_TIMELINE = """
SELECT * FROM rpm.vitals_timeline(%(patient)s, %(metric)s::smallint, %(start)s, %(end)s,
                                  %(resolution)s)
"""
# The database's share: the same query, every column consumed in the server (so none can be
# planned away), one row back; without it, parsing rows in Python dominates short timelines.
IN_SERVER = """
SELECT count(*), sum(t.c), min(t.lo), max(t.hi), sum(t.a), max(t.last), max(t.last_at)
FROM ({query}) AS t (b, c, lo, hi, a, last, last_at)
"""


def load(conn: psycopg.Connection, end: datetime) -> int:
    conn.execute(SERIES, {"patients": PATIENTS, "metrics": list(METRICS)})
    start = end - timedelta(days=DAYS)
    day = start
    while day < end:
        until = min(day + timedelta(days=1), end)
        conn.execute(LOAD_DAY, {"start": day, "end": until, "step": STEP_S})
        day = until
    conn.execute("ANALYZE rpm.readings")
    row = conn.execute("SELECT count(*) FROM rpm.readings").fetchone()
    assert row is not None
    return int(row[0])


def differences(raw: list[tuple[object, ...]], rollup: list[tuple[object, ...]]) -> list[str]:
    """Rows where the two answers differ (averages compared to 1e-9: sums add up differently)."""
    if len(raw) != len(rollup):
        return [f"{len(raw)} raw rows, {len(rollup)} rollup rows"]
    found = []
    for a, b in zip(raw, rollup, strict=True):
        avg_a, avg_b = a[4], b[4]
        averages_match = (avg_a is None and avg_b is None) or (
            isinstance(avg_a, float)
            and isinstance(avg_b, float)
            and math.isclose(avg_a, avg_b, rel_tol=1e-9)
        )
        if a[:4] != b[:4] or a[5:] != b[5:] or not averages_match:
            found.append(f"raw {a} != rollup {b}")
    return found


# Long on purpose: one scripted scenario read top to bottom (set up, measure the baseline
# and the subject in the same run, report), where the order of the steps is the method.
# Loading 5.4 million readings and the first refresh take minutes on 2 cores (longer on the TSL
# edition: its invalidation trigger runs for every inserted row).
@pytest.mark.timeout(1200)
def test_rollup_query_ratio(database_factory: DatabaseFactory, migrated_template: str) -> None:
    url = database_factory.clone(migrated_template)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    with psycopg.connect(url, autocommit=True) as conn:
        edition = detect_edition(conn)
        started = time.perf_counter()
        rows = load(conn, end)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        report = refresh_rollups(conn, edition=edition)
        refresh_s = time.perf_counter() - started
        conn.execute("ANALYZE")
        levels = {
            level: conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                    psycopg.sql.Identifier("rpm", f"readings_{level}")
                )
            ).fetchone()
            for level in ("1m", "1h", "1d")
        }
        series = conn.execute("SELECT patient_id, metric_id FROM bench_series").fetchall()

        rng = random.Random(50)
        shapes: dict[str, dict[str, object]] = {}
        for name, span, resolution in SHAPES:
            timings: dict[str, list[float]] = {
                "raw": [],
                "rollup": [],
                "raw_client": [],
                "rollup_client": [],
            }
            for n in range(QUERIES + 3):  # the first three warm caches and plans
                patient, metric = rng.choice(series)
                # Unaligned ends, anywhere in the loaded days, as a client would ask.
                query_end = end - timedelta(seconds=rng.randrange(int((DAYS * 86400) // 8)))
                params = {
                    "patient": patient,
                    "metric": metric,
                    "start": query_end - span,
                    "end": query_end,
                    "resolution": resolution,
                    "width": WIDTHS[resolution],
                }
                answers = {}
                order = ("raw", "rollup") if n % 2 else ("rollup", "raw")
                for kind in order:
                    sql = RAW_TIMELINE if kind == "raw" else ROLLUP_TIMELINE
                    t0 = time.perf_counter()
                    conn.execute(IN_SERVER.format(query=sql), params).fetchall()
                    t1 = time.perf_counter()
                    answers[kind] = conn.execute(sql, params).fetchall()
                    t2 = time.perf_counter()
                    if n >= 3:
                        timings[kind].append(t1 - t0)
                        timings[f"{kind}_client"].append(t2 - t1)
                wrong = differences(answers["raw"], answers["rollup"])
                assert not wrong, (name, params, wrong[:3])
            ms = {kind: statistics.median(values) * 1000 for kind, values in timings.items()}
            p90 = {
                kind: statistics.quantiles(values, n=10)[-1] * 1000
                for kind, values in timings.items()
            }
            shapes[name] = {
                "range_days": span / timedelta(days=1),
                "resolution": resolution,
                "buckets": len(answers["rollup"]),
                "raw_readings_per_query": round(span / timedelta(seconds=STEP_S)),
                "median_ms": {kind: round(value, 3) for kind, value in ms.items()},
                "p90_ms": {kind: round(value, 3) for kind, value in p90.items()},
                "ratio_raw_to_rollup": round(ms["raw"] / ms["rollup"], 1),
                "ratio_raw_to_rollup_client": round(ms["raw_client"] / ms["rollup_client"], 1),
            }

    result = {
        "edition": edition.license,
        "timescaledb": edition.timescaledb_version,
        "readings": rows,
        "series": len(series),
        "days": DAYS,
        "step_s": STEP_S,
        "queries_per_shape": QUERIES,
        "rollup_rows": {level: int(row[0]) if row else 0 for level, row in levels.items()},
        "load_s": round(load_s, 1),
        "refresh_s": round(refresh_s, 1),
        "refresh_rows_written": dict(report.rows_written),
        "shapes": shapes,
        "target": "ratio_raw_to_rollup >= 50 for long-range trends",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")
    print(  # noqa: T201 - the benchmark's report
        f"\n{rows:,} readings ({edition.license}), loaded in {load_s:.0f} s, "
        f"rollups refreshed in {refresh_s:.0f} s\n"
        "| timeline | buckets | raw ms | rollup ms | raw ÷ rollup "
        "| with rows to Python: raw ms | rollup ms | raw ÷ rollup |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name, shape in shapes.items():
        median = shape["median_ms"]
        assert isinstance(median, dict)
        print(  # noqa: T201
            f"| {name} | {shape['buckets']} | {median['raw']} | {median['rollup']} | "
            f"{shape['ratio_raw_to_rollup']} | {median['raw_client']} | "
            f"{median['rollup_client']} | {shape['ratio_raw_to_rollup_client']} |"
        )
