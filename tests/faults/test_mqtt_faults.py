"""Restarts and kills while a simulated ward publishes over MQTT: nothing lost, nothing doubled.

The ward keeps publishing (QoS 1, as the gateway account) through every fault; paho re-sends
what the broker has not acknowledged. After each fault: every acknowledged reading is stored,
readings sent = readings stored, no reading stored twice, and ``pg_amcheck --heapallindexed``
finds the heap and every index consistent.

The ingestor is killed at two precise points without any hook in its code: *before COMMIT* by
blocking its batch's last statement on a table lock and watching ``pg_stat_activity`` until it
waits there, and *after COMMIT but before the PUBACK* by a proxy that swallows the ingestor's
acknowledgements while batches keep committing.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from rpmstore.localstack.debian_root import DebianRoot
from tests.conftest import PgServer
from tests.faults.conftest import (
    FaultWard,
    WardPublisher,
    assert_amcheck_clean,
    assert_exactly_once,
    reading_keys,
    send_in_background,
    wait_until,
)
from tests.faults.proxy import HoldingProxy

pytestmark = pytest.mark.slow  # servers killed and restarted under load

PAYLOADS = 450  # about 700 stored rows
RATE = 150.0  # payloads per second: the ward sends for about 3 s, the fault lands in the middle
INGEST_APP = "rpmstore-ingest-mqtt"  # the ingestor's application_name (ingest/runtime.py)


def ingest_backends(ward: FaultWard, *, blocked_before_commit: bool = False) -> int:
    """The ingestor's connections to this test's database; with ``blocked_before_commit``,
    only those waiting for a lock to insert their batch row (the last statement before
    COMMIT)."""
    with psycopg.connect(ward.admin_db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND (NOT %s OR (wait_event_type = 'Lock' "
            "AND query LIKE '%%INSERT INTO rpm.ingest_batches%%'))",
            (INGEST_APP, blocked_before_commit),
        ).fetchone()
    assert row is not None
    return int(row[0])


def finish_and_check(
    ward: FaultWard, publisher: WardPublisher, debian_root: DebianRoot, expected_rows: int
) -> None:
    publisher.wait_all_acked()
    wait_until(lambda: ward.stored_rows() >= expected_rows, "every reading to be stored")
    assert_exactly_once(ward, publisher.payloads(), publisher.acked())
    ward.assert_alerts_exact()
    assert_amcheck_clean(debian_root, ward.admin_db_url)


def start_sending(ward: FaultWard, publisher: WardPublisher) -> int:
    """Start the ward; return the rows it will store. Returns once readings are landing."""
    payloads = ward.payloads(PAYLOADS)
    sender = send_in_background(payloads, publisher.send, RATE)
    wait_until(lambda: ward.stored_rows() > 0, "the first readings to be stored")
    ward.threads.append(sender)
    return sum(p.readings for p in payloads)


def test_postgres_restart_while_the_ward_sends(
    fault_ward: FaultWard, pg_server: PgServer, debian_root: DebianRoot
) -> None:
    if pg_server.instance is None:
        pytest.skip("RPMSTORE_TEST_ADMIN_DATABASE_URL points at a server the tests cannot restart")
    fault_ward.ingestor().start()
    publisher = fault_ward.publisher()
    try:
        rows = start_sending(fault_ward, publisher)
        pg_server.instance.stop(mode="fast")  # every connection of the ingestor breaks
        time.sleep(1.0)  # an outage long enough for the ward to publish into it
        pg_server.instance.start()
        finish_and_check(fault_ward, publisher, debian_root, rows)
    finally:
        publisher.close()


def test_mosquitto_restart_while_the_ward_sends(
    fault_ward: FaultWard, debian_root: DebianRoot
) -> None:
    """A broker restart (SIGTERM: it saves its persistence file) with the ingestor back first:
    messages queued for the ingestor's session and those in flight survive, and the ward's
    unacknowledged messages are re-sent. (The other order loses readings: next test.)"""
    ingestor = fault_ward.ingestor()
    ingestor.start()
    gate = HoldingProxy(fault_ward.broker.port)  # the ward's way in
    publisher = fault_ward.publisher(broker_port=gate.port)
    try:
        rows = start_sending(fault_ward, publisher)
        gate.refuse()
        fault_ward.broker.stop()
        time.sleep(1.0)  # the ward keeps publishing into its client's queue meanwhile
        fault_ward.broker.start()
        wait_until(lambda: ingestor.log_count(b"MQTT connected") == 2, "the ingestor to return")
        gate.admit()
        finish_and_check(fault_ward, publisher, debian_root, rows)
    finally:
        publisher.close()
        gate.close()


def test_mosquitto_restart_loses_what_devices_send_before_the_ingestor_resubscribes(
    fault_ward: FaultWard, debian_root: DebianRoot
) -> None:
    """A measured limit of Mosquitto 2.0.21 (Debian trixie): after a restart it restores the
    ingestor's persistent session and its queued messages, but not the session's *shared*
    subscription. Until the ingestor reconnects and subscribes again, the broker acknowledges
    device messages and drops them (no subscriber matches). Should this test fail because
    nothing is lost, Mosquitto restores shared subscriptions: make it an exactly-once test."""
    gate = HoldingProxy(fault_ward.broker.port)  # the ingestor's way in
    ingestor = fault_ward.ingestor(broker_port=gate.port)
    ingestor.start()
    publisher = fault_ward.publisher()
    try:
        start_sending(fault_ward, publisher)
        gate.refuse()
        fault_ward.broker.stop()
        before_stop = publisher.acked()
        fault_ward.broker.start()
        restarted_at = time.monotonic()
        wait_until(lambda: publisher.acks_since(restarted_at) >= 20, "the ward to publish again")
        gate.admit()
        wait_until(lambda: ingestor.log_count(b"MQTT connected") == 2, "the ingestor to return")
        publisher.wait_all_acked()
        wait_until(lambda: _settled(fault_ward), "ingest to settle")
        with psycopg.connect(fault_ward.db_url) as conn:
            stored = {
                (str(device), str(client_id))
                for device, client_id in conn.execute(
                    "SELECT device_id, client_reading_id FROM rpm.readings"
                )
            }
        assert set(reading_keys(before_stop)) <= stored, "what was acked before the restart"
        lost = set(reading_keys(publisher.acked())) - stored
        assert lost, "Mosquitto now restores shared subscriptions: make this exactly-once"
        fault_ward.assert_alerts_exact(all_episodes_stored=False)
        assert_amcheck_clean(debian_root, fault_ward.admin_db_url)
    finally:
        publisher.close()
        gate.close()


def test_single_ingestor_mode_loses_nothing_when_the_broker_restarts_first(
    fault_ward: FaultWard, debian_root: DebianRoot
) -> None:
    """The same restart as above with RPMSTORE_MQTT_GROUP="": a plain persistent subscription,
    which Mosquitto restores with the session, so messages published before the ingestor is
    back are queued for it: every acknowledged reading is stored exactly once."""
    gate = HoldingProxy(fault_ward.broker.port)  # the ingestor's way in
    ingestor = fault_ward.ingestor(broker_port=gate.port, group="")
    ingestor.start()
    publisher = fault_ward.publisher()
    try:
        rows = start_sending(fault_ward, publisher)
        gate.refuse()
        fault_ward.broker.stop()
        fault_ward.broker.start()
        restarted_at = time.monotonic()
        wait_until(lambda: publisher.acks_since(restarted_at) >= 20, "the ward to publish again")
        gate.admit()
        wait_until(lambda: ingestor.log_count(b"MQTT connected") == 2, "the ingestor to return")
        finish_and_check(fault_ward, publisher, debian_root, rows)
    finally:
        publisher.close()
        gate.close()


def _settled(ward: FaultWard) -> bool:
    """Whether the stored row count stays the same over a second (ingest has caught up)."""
    before = ward.stored_rows()
    time.sleep(1.0)
    return ward.stored_rows() == before


def test_ingestor_killed_before_commit(fault_ward: FaultWard, debian_root: DebianRoot) -> None:
    ingestor = fault_ward.ingestor()
    ingestor.start()
    publisher = fault_ward.publisher()
    try:
        rows = start_sending(fault_ward, publisher)
        with psycopg.connect(fault_ward.admin_db_url) as locker:
            # A batch's last statement before COMMIT inserts its rpm.ingest_batches row: this
            # lock makes it wait there with its readings already COPYed.
            locker.execute("LOCK TABLE rpm.ingest_batches IN SHARE MODE")
            wait_until(
                lambda: ingest_backends(fault_ward, blocked_before_commit=True) > 0,
                "an ingest batch to wait just before its COMMIT",
            )
            ingestor.kill()
            stored_at_kill = fault_ward.stored_rows()
            locker.rollback()  # the blocked INSERT runs, then its backend finds the client gone
        wait_until(lambda: ingest_backends(fault_ward) == 0, "the dead ingestor's backends to end")
        assert fault_ward.stored_rows() == stored_at_kill, "the killed batch never committed"
        ingestor.start()  # its persistent session holds the unacknowledged messages
        finish_and_check(fault_ward, publisher, debian_root, rows)
    finally:
        publisher.close()


def test_ingestor_killed_after_commit_before_the_puback(
    fault_ward: FaultWard, debian_root: DebianRoot
) -> None:
    proxy = HoldingProxy(fault_ward.broker.port)
    ingestor = fault_ward.ingestor(broker_port=proxy.port)
    ingestor.start()
    publisher = fault_ward.publisher()
    try:
        rows = start_sending(fault_ward, publisher)
        proxy.hold()  # from here on the ingestor's PUBACKs never reach the broker
        held_from = fault_ward.stored_rows()
        # Both: under load the kill could otherwise land after a commit but before the
        # ingestor wrote that batch's PUBACKs, and then nothing committed was held back.
        wait_until(
            lambda: fault_ward.stored_rows() >= held_from + 30 and proxy.swallowed_bytes > 0,
            "batches to commit while their acknowledgements are held",
        )
        ingestor.kill()
        proxy.cut()
        wait_until(lambda: ingest_backends(fault_ward) == 0, "the dead ingestor's backends to end")
        committed_unacked = fault_ward.stored_rows() - held_from
        assert proxy.swallowed_bytes > 0, "PUBACKs were held back"
        ingestor.start()
        finish_and_check(fault_ward, publisher, debian_root, rows)
        # The broker redelivered every message committed but never acknowledged, and ingest
        # recognised each reading as already stored (counted, not stored again).
        assert fault_ward.duplicates_recognised() >= committed_unacked
    finally:
        publisher.close()
        proxy.close()


ALERTS_APP = "rpmstore-alerts-mqtt"  # the ingestor's alert worker (ingest/runtime.py)
ALERT_LOCK_CLASS = 1634497652  # the evaluator's advisory locks (schema/queries/alerting.sql)


def alert_backends(ward: FaultWard, *, waiting_for_lock: bool = False) -> int:
    """The ingestor's alert-evaluation connections; with ``waiting_for_lock``, only those
    waiting for an advisory lock (the evaluator's first statement locks its patients)."""
    with psycopg.connect(ward.admin_db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND (NOT %s OR (wait_event_type = 'Lock' "
            "AND wait_event = 'advisory'))",
            (ALERTS_APP, waiting_for_lock),
        ).fetchone()
    assert row is not None
    return int(row[0])


def outbox_batches(ward: FaultWard) -> int:
    with psycopg.connect(ward.admin_db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM rpm.alert_outbox").fetchone()
    assert row is not None
    return int(row[0])


def test_ingestor_killed_after_commit_and_puback_before_alert_evaluation(
    fault_ward: FaultWard, debian_root: DebianRoot
) -> None:
    """Alert evaluation runs after the COMMIT and the PUBACK, so nothing sends those readings
    again: before the alert outbox, a process killed in between lost the evaluation. Timed
    from outside: the evaluator's advisory locks for every patient are held, so every
    evaluation waits at its first statement while batches commit and are acknowledged; the
    ingestor is killed once all of the ward's readings are stored and acknowledged. The
    restarted ingestor must evaluate what the dead one left in the outbox."""
    ingestor = fault_ward.ingestor()
    ingestor.start()
    publisher = fault_ward.publisher()
    try:
        with psycopg.connect(fault_ward.admin_db_url, autocommit=True) as locker:
            locker.execute(
                "SELECT count(pg_advisory_lock(%s, bucket)) FROM ("
                " SELECT DISTINCT rpm.alert_lock_bucket(patient_id) AS bucket"
                " FROM rpm.patients ORDER BY 1) buckets",
                (ALERT_LOCK_CLASS,),
            )
            rows = start_sending(fault_ward, publisher)
            publisher.wait_all_acked()
            wait_until(lambda: fault_ward.stored_rows() >= rows, "every reading to be stored")
            wait_until(
                lambda: alert_backends(fault_ward, waiting_for_lock=True) > 0,
                "an alert evaluation to wait for its patients' lock",
            )
            ingestor.kill()
            locker.execute("SELECT pg_advisory_unlock_all()")
        wait_until(
            lambda: ingest_backends(fault_ward) + alert_backends(fault_ward) == 0,
            "the dead ingestor's backends to end",
        )
        assert outbox_batches(fault_ward) > 0, "committed batches were left unevaluated"
        ingestor.start()
        wait_until(
            lambda: outbox_batches(fault_ward) == 0,
            "the restarted ingestor to evaluate what the dead one left",
        )
        finish_and_check(fault_ward, publisher, debian_root, rows)
    finally:
        publisher.close()
