"""No alert lost or doubled: :func:`assert_alerts_exact`, run after every fault."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from alerting import AlertEvaluator, TouchedRange
from alerting.sweep import evaluate_parked
from tests.faults.episodes import Episode, reading_keys

# The columns that say what an alert is and what it claims about the readings. (updated_at,
# resolved_at and the snapshot's timestamps say when the engine wrote, not what.)
_ALERTS = """
SELECT a.alert_id, a.patient_id, a.rule_id, r.kind, a.status, a.resolution,
       a.first_breach_at, a.last_breach_at, a.breach_count, a.peak_value, a.last_value
FROM rpm.alerts a JOIN rpm.alert_rules r USING (rule_id)
ORDER BY a.patient_id, a.rule_id, a.first_breach_at, a.alert_id
"""
_THRESHOLD_ALERTS = """
SELECT a.patient_id, a.rule_id, a.status, a.resolution, a.first_breach_at, a.last_breach_at,
       a.breach_count, a.peak_value, a.last_value
FROM rpm.alerts a JOIN rpm.alert_rules r USING (rule_id)
WHERE r.kind IN ('above', 'below')
ORDER BY a.patient_id, a.rule_id, a.first_breach_at
"""
# Every stored series, over its whole stored span (low/high unknown: every rule is evaluated).
_SERIES = """
SELECT patient_id, metric_id, min(measured_at) AS range_start, max(measured_at) AS range_end
FROM rpm.readings GROUP BY patient_id, metric_id
"""
# Threshold alerts with the effective threshold of their rule for their patient.
_WITH_RULES = """
WITH al AS (
    SELECT a.*, r.metric_id, r.kind, coalesce(o.threshold, r.threshold) AS threshold
    FROM rpm.alerts a
    JOIN rpm.alert_rules r USING (rule_id)
    LEFT JOIN rpm.alert_rule_overrides o
      ON o.rule_id = a.rule_id AND o.patient_id = a.patient_id
    WHERE r.kind IN ('above', 'below')
)
"""
# Two alerts of one (patient, rule) that overlap, or that no in-range reading separates: the
# same breach run alerted twice.
_DOUBLED = (
    _WITH_RULES
    + """
, ordered AS (
    SELECT al.*,
           lag(alert_id) OVER w AS prev_id,
           lag(last_breach_at) OVER w AS prev_last
    FROM al
    WINDOW w AS (PARTITION BY patient_id, rule_id ORDER BY first_breach_at, last_breach_at)
)
SELECT prev_id, alert_id, patient_id, rule_id, prev_last, first_breach_at
FROM ordered o
WHERE prev_id IS NOT NULL
  AND (first_breach_at <= prev_last
       OR NOT EXISTS (
           SELECT 1 FROM rpm.readings x
           WHERE x.patient_id = o.patient_id AND x.metric_id = o.metric_id
             AND x.measured_at > o.prev_last AND x.measured_at < o.first_breach_at
             AND NOT rpm.alert_breaches(o.kind, o.threshold, x.value)))
"""
)
# Alerts whose count or peak is not what their span's stored readings say (a reading counted
# twice, or one missed).
_MISCOUNTED = (
    _WITH_RULES
    + """
SELECT al.alert_id, al.breach_count, s.breaches, al.peak_value, s.peak
FROM al
CROSS JOIN LATERAL (
    SELECT count(*) AS breaches,
           CASE al.kind WHEN 'above' THEN max(x.value) ELSE min(x.value) END AS peak
    FROM rpm.readings x
    WHERE x.patient_id = al.patient_id AND x.metric_id = al.metric_id
      AND x.measured_at BETWEEN al.first_breach_at AND al.last_breach_at
      AND rpm.alert_breaches(al.kind, al.threshold, x.value)
) s
WHERE (al.breach_count, al.peak_value) IS DISTINCT FROM (s.breaches::integer, s.peak)
"""
)
# (patient, rule) pairs with an alert whose span holds an in-range reading.
_UNSPLIT = (
    _WITH_RULES
    + """
SELECT DISTINCT al.patient_id, al.rule_id
FROM al
WHERE EXISTS (
    SELECT 1 FROM rpm.readings x
    WHERE x.patient_id = al.patient_id AND x.metric_id = al.metric_id
      AND x.measured_at BETWEEN al.first_breach_at AND al.last_breach_at
      AND NOT rpm.alert_breaches(al.kind, al.threshold, x.value))
"""
)
# Each alert was opened once and, if resolved, resolved once.
_EVENTS = """
SELECT a.alert_id, a.status,
       count(*) FILTER (WHERE e.from_status IS NULL AND e.to_status = 'open') AS opened,
       count(*) FILTER (WHERE e.to_status = 'resolved') AS resolved
FROM rpm.alerts a LEFT JOIN rpm.alert_events e USING (alert_id)
GROUP BY a.alert_id, a.status
HAVING count(*) FILTER (WHERE e.from_status IS NULL AND e.to_status = 'open') <> 1
    OR count(*) FILTER (WHERE e.to_status = 'resolved') <> (a.status = 'resolved')::integer
"""


class _Rollback(Exception):
    """Leaves the database as it was: the checks only look."""


def assert_alerts_exact(
    db_url: str, episodes: Sequence[Episode], *, all_episodes_stored: bool = True
) -> None:
    """No alert lost, none doubled, and every injected episode alerted, exactly.

    Call it once nothing evaluates any more (the ingesting processes stopped with SIGTERM,
    which drains their alert evaluation). ``rpm.alert_outbox`` must be empty then: the
    processes evaluated every batch committed, including what a killed process left. Ranges
    parked in ``rpm.alert_pending_evaluations`` (evaluation failed repeatedly) are delayed by
    design, not lost: they are evaluated first, with the sweep's machinery, as the sweep of a
    running system would.

    (a) **Nothing lost.** The real evaluator re-evaluates every stored reading: one touched
        range per (patient, metric) over its whole stored span, every rule considered. Since
        evaluation is idempotent, that must change nothing in ``rpm.alerts``: same alerts,
        same status, span, counts, peak and last value. An evaluation that never ran (a
        process killed between the ingest COMMIT and the end of its evaluation) shows here as
        an alert it opens, extends or resolves.
    (b) **Nothing doubled.** The database allows one *active* alert per (patient, rule) (a
        partial unique index), so a doubled alert is not two open rows. It is:
        - two alerts of one (patient, rule) for the same episode: their breach spans
          overlap, or no in-range reading separates them (one breach run alerted twice, e.g.
          one resolved and one reopened, or two resolved);
        - one alert counting a reading twice, or one missing from its span: its
          breach_count or peak_value differs from the breaching readings stored in
          [first_breach_at, last_breach_at];
        - an alert opened (or resolved) twice in its history: ``rpm.alert_events`` holds
          one "opened" event per alert, and one "resolved" event per resolved alert.
        And the alerts are exactly those the readings imply: evaluating every stored reading
        from scratch (all threshold alerts deleted, in a transaction rolled back afterwards)
        recreates the same threshold alerts, neither more nor fewer. One exception, by the
        rules' design (they never retract what a clinician saw): an in-range reading that
        arrives after an alert already covered its time does not split that alert, where a
        from-scratch evaluation sees two runs. The ward's own traffic can breach thresholds
        now and then (patient 0's systolic baseline is 100.5 mm[Hg]; a CGM trough nears 70
        mg/dL) and its late or redelivered readings arrive out of order, so (patient, rule)
        pairs with an alert spanning an in-range reading are left out of this comparison;
        the episodes' series never have one (asserted), so they are always compared.
    (c) **Every injected episode alerted**, with the span, count, peak, last value and status
        the rules give its readings (``Episode.expected``), and no other alert for those patients.
        With ``all_episodes_stored=False`` (a test where acknowledged readings are lost by
        design) only episodes whose readings are all stored are checked.

    The database is left as it was, apart from parked evaluations being evaluated.
    """
    asyncio.run(_check(db_url, episodes, all_episodes_stored=all_episodes_stored))


async def _check(db_url: str, episodes: Sequence[Episode], *, all_episodes_stored: bool) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        outbox = await conn.fetchval("SELECT count(*) FROM rpm.alert_outbox")
        assert outbox == 0, f"{outbox} committed ingest batches were never evaluated"
        await evaluate_parked(conn, AlertEvaluator())
        await _assert_nothing_lost(conn)
        await _assert_nothing_doubled(conn, episodes)
        await _assert_episodes_alerted(conn, episodes, all_episodes_stored=all_episodes_stored)
    finally:
        await conn.close()


async def _series(conn: asyncpg.Connection) -> list[TouchedRange]:
    return [
        TouchedRange(r["patient_id"], r["metric_id"], r["range_start"], r["range_end"])
        for r in await conn.fetch(_SERIES)
    ]


async def _rolled_back(conn: asyncpg.Connection, check: Any) -> None:
    try:
        async with conn.transaction():
            await check()
            raise _Rollback
    except _Rollback:
        pass


async def _assert_nothing_lost(conn: asyncpg.Connection) -> None:
    async def check() -> None:
        before = [tuple(r) for r in await conn.fetch(_ALERTS)]
        await AlertEvaluator().evaluate(conn, await _series(conn))
        after = [tuple(r) for r in await conn.fetch(_ALERTS)]
        assert _diff(before, after) == ([], []), (
            "re-evaluating every stored reading changed rpm.alerts (an evaluation was lost, or "
            "an alert disagrees with its readings); "
            "(before only, after only) = " + repr(_diff(before, after))
        )

    await _rolled_back(conn, check)


async def _assert_nothing_doubled(conn: asyncpg.Connection, episodes: Sequence[Episode]) -> None:
    doubled = [dict(r) for r in await conn.fetch(_DOUBLED)]
    assert doubled == [], f"one breach run alerted twice: {doubled}"
    miscounted = [dict(r) for r in await conn.fetch(_MISCOUNTED)]
    assert miscounted == [], f"alerts whose count or peak disagree with the readings: {miscounted}"
    events = [dict(r) for r in await conn.fetch(_EVENTS)]
    assert events == [], f"alerts opened or resolved other than once: {events}"
    active = Counter(
        (r["patient_id"], r["rule_id"])
        for r in await conn.fetch(_ALERTS)
        if r["status"] != "resolved"
    )
    assert [key for key, n in active.items() if n > 1] == [], "two active alerts of one rule"

    # Where the rules are order-dependent by design (they never retract what a clinician saw):
    # an in-range reading that arrives after an alert covered its time does not split the
    # alert. Those (patient, rule) pairs legitimately differ from a from-scratch evaluation.
    unsplit = {(r["patient_id"], r["rule_id"]) for r in await conn.fetch(_UNSPLIT)}
    episode_patients = {e.patient_id for e in episodes}
    assert {p for p, _ in unsplit} & episode_patients == set(), (
        f"an episode alert spans an in-range reading: {unsplit}"
    )

    async def check() -> None:
        stored = [tuple(r) for r in await conn.fetch(_THRESHOLD_ALERTS)]
        await conn.execute(
            "DELETE FROM rpm.alert_events WHERE alert_id IN (SELECT alert_id FROM rpm.alerts a"
            " JOIN rpm.alert_rules r USING (rule_id) WHERE r.kind IN ('above', 'below'))"
        )
        await conn.execute(
            "DELETE FROM rpm.alerts a USING rpm.alert_rules r"
            " WHERE r.rule_id = a.rule_id AND r.kind IN ('above', 'below')"
        )
        await AlertEvaluator().evaluate(conn, await _series(conn))
        implied = [tuple(r) for r in await conn.fetch(_THRESHOLD_ALERTS)]
        stored, implied = (
            [a for a in alerts if (a[0], a[1]) not in unsplit] for alerts in (stored, implied)
        )
        assert _diff(stored, implied) == ([], []), (
            "the stored threshold alerts are not those the stored readings imply; "
            "(stored only, implied only) = " + repr(_diff(stored, implied))
        )

    await _rolled_back(conn, check)


async def _assert_episodes_alerted(
    conn: asyncpg.Connection, episodes: Sequence[Episode], *, all_episodes_stored: bool
) -> None:
    expected = [alert for episode in episodes for alert in episode.expected]
    patients = sorted({e.patient_id for e in expected})
    rows = await conn.fetch(
        "SELECT patient_id, rule_id, first_breach_at, last_breach_at, breach_count, peak_value,"
        " last_value, CASE status WHEN 'resolved' THEN 'resolved' ELSE 'open' END AS status"
        " FROM rpm.alerts WHERE patient_id = ANY($1::uuid[])",
        patients,
    )
    found = {_key(r["patient_id"], r["rule_id"], r["first_breach_at"]): tuple(r) for r in rows}
    wanted = {
        _key(e.patient_id, e.rule_id, e.first_breach_at): (
            e.patient_id,
            e.rule_id,
            e.first_breach_at,
            e.last_breach_at,
            e.breach_count,
            e.peak_value,
            e.last_value,
            e.status,
        )
        for e in expected
    }
    if not all_episodes_stored:
        complete = await _fully_stored_patients(conn, episodes)
        found = {k: v for k, v in found.items() if k[0] in complete}
        wanted = {k: v for k, v in wanted.items() if k[0] in complete}
    missing = [wanted[k] for k in sorted(wanted) if found.get(k) != wanted[k]]
    extra = [found[k] for k in sorted(found) if wanted.get(k) != found[k]]
    assert (missing, extra) == ([], []), (
        "injected episodes and their alerts disagree; (expected, found instead) = "
        + repr((missing, extra))
    )


async def _fully_stored_patients(
    conn: asyncpg.Connection, episodes: Sequence[Episode]
) -> set[uuid.UUID]:
    """Patients none of whose episode readings were lost."""
    stored = {
        (str(r["device_id"]), r["client_reading_id"])
        for r in await conn.fetch(
            "SELECT device_id, client_reading_id FROM rpm.readings"
            " WHERE patient_id = ANY($1::uuid[])",
            sorted({e.patient_id for e in episodes}),
        )
    }
    complete = {e.patient_id for e in episodes}
    for episode in episodes:
        if not set(reading_keys(episode.payloads)) <= stored:
            complete.discard(episode.patient_id)
    return complete


def _key(patient: uuid.UUID, rule: uuid.UUID, first: datetime) -> tuple[uuid.UUID, str, datetime]:
    return (patient, str(rule), first)


def _diff(
    left: list[tuple[Any, ...]], right: list[tuple[Any, ...]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    only_left, only_right = Counter(left) - Counter(right), Counter(right) - Counter(left)
    return sorted(only_left.elements(), key=repr), sorted(only_right.elements(), key=repr)
