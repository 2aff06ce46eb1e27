"""The alert check has teeth: after a clean run it passes, and each way of losing or doubling
an alert, made by hand in the database, makes it fail."""

from __future__ import annotations

import psycopg
import pytest

from tests.faults.alerts import assert_alerts_exact
from tests.faults.conftest import FaultWard, send_in_background, wait_until
from tests.faults.episodes import (
    HEART_RATE_ABOVE_130_FOR_10_MIN,
    SPO2_BELOW_90_FOR_5_MIN,
    SYSTOLIC_ABOVE_180,
)

pytestmark = pytest.mark.slow  # whole ward runs checked for lost or doubled alerts

_COLUMNS = (
    "rule_id, patient_id, status, severity, rule_snapshot, first_breach_at, last_breach_at,"
    " last_value, peak_value, breach_count, resolved_at, resolved_by, resolution"
)
# Each: what it does to a correct set of alerts, and the statements doing it ($1: a rule id).
MUTATIONS: dict[str, tuple[str, list[str]]] = {
    "an alert lost (its evaluation never ran)": (
        str(SYSTOLIC_ABOVE_180),
        [
            "DELETE FROM rpm.alert_events WHERE alert_id IN"
            " (SELECT alert_id FROM rpm.alerts WHERE rule_id = %(rule)s)",
            "DELETE FROM rpm.alerts WHERE rule_id = %(rule)s",
        ],
    ),
    "an episode alerted twice (a second, resolved alert of the same run)": (
        str(SPO2_BELOW_90_FOR_5_MIN),
        [
            f"INSERT INTO rpm.alerts ({_COLUMNS}) SELECT {_COLUMNS} FROM rpm.alerts"
            " WHERE rule_id = %(rule)s AND status = 'resolved'",
        ],
    ),
    "a reading counted twice": (
        str(SPO2_BELOW_90_FOR_5_MIN),
        ["UPDATE rpm.alerts SET breach_count = breach_count + 1 WHERE rule_id = %(rule)s"],
    ),
    "an alert opened twice in its history": (
        str(HEART_RATE_ABOVE_130_FOR_10_MIN),
        [
            "INSERT INTO rpm.alert_events (alert_id, actor, from_status, to_status)"
            " SELECT alert_id, 'rpmstore', NULL, 'open' FROM rpm.alerts WHERE rule_id = %(rule)s",
        ],
    ),
    "the newest breach never evaluated (span one reading short)": (
        str(HEART_RATE_ABOVE_130_FOR_10_MIN),
        [
            "UPDATE rpm.alerts SET last_breach_at = last_breach_at - interval '30 seconds',"
            " breach_count = breach_count - 1 WHERE rule_id = %(rule)s",
        ],
    ),
    "an auto-resolution lost": (
        str(SYSTOLIC_ABOVE_180),
        [
            "UPDATE rpm.alerts SET status = 'open', resolved_at = NULL, resolved_by = NULL,"
            " resolution = NULL WHERE rule_id = %(rule)s",
            "DELETE FROM rpm.alert_events WHERE to_status = 'resolved' AND alert_id IN"
            " (SELECT alert_id FROM rpm.alerts WHERE rule_id = %(rule)s)",
        ],
    ),
}


def test_the_alert_check_passes_a_clean_run_and_fails_each_lost_or_doubled_alert(
    fault_ward: FaultWard,
) -> None:
    fault_ward.ingestor().start()
    publisher = fault_ward.publisher()
    try:
        payloads = fault_ward.payloads(60)
        send_in_background(payloads, publisher.send, 150.0).join()
        publisher.wait_all_acked()
        rows = sum(p.readings for p in payloads)
        wait_until(lambda: fault_ward.stored_rows() >= rows, "every reading to be stored")
    finally:
        publisher.close()
    fault_ward.assert_alerts_exact()  # stops the ingestor; a clean run passes

    with psycopg.connect(fault_ward.admin_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE saved_alerts AS SELECT * FROM rpm.alerts")
        conn.execute("CREATE TABLE saved_events AS SELECT * FROM rpm.alert_events")
        for what, (rule, statements) in MUTATIONS.items():
            with conn.transaction():
                for statement in statements:
                    assert conn.execute(statement, {"rule": rule}).rowcount > 0, what
            with pytest.raises(AssertionError):
                assert_alerts_exact(fault_ward.db_url, fault_ward.episodes)
            with conn.transaction():
                conn.execute("DELETE FROM rpm.alert_events")
                conn.execute("DELETE FROM rpm.alerts")
                conn.execute("INSERT INTO rpm.alerts SELECT * FROM saved_alerts")
                conn.execute(
                    "INSERT INTO rpm.alert_events OVERRIDING SYSTEM VALUE"
                    " SELECT * FROM saved_events"
                )
            assert_alerts_exact(fault_ward.db_url, fault_ward.episodes)  # restored: passes
