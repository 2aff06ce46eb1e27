"""``rpmstore demo``: register a patient and two devices, store an hour of readings, read them back.

The readings go through the same batch writer ingest uses (one batch, one binary COPY) and are
read back from the TimescaleDB hypertable, so the output proves the whole path works.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from ingest.store import ValidatedReading, store_readings
from schema.edition import detect_edition
from schema.registry import PatientIdentity, assign_device, register_device, register_patient
from schema.sql import queries

DEMO_MRN_SYSTEM = "urn:rpmstore:demo:mrn"


def _simulated_hour(
    *,
    now: datetime,
    oximeter: uuid.UUID,
    cuff: uuid.UUID,
    patient: uuid.UUID,
    metric_ids: dict[str, int],
    seed: int,
) -> list[ValidatedReading]:
    """An hour of plausible vitals: SpO2 and heart rate every 5 min, blood pressure twice."""
    rng = np.random.default_rng(seed)
    readings = []
    for minutes_ago in range(60, 0, -5):
        at = now - timedelta(minutes=minutes_ago)
        readings.append(
            ValidatedReading(
                at,
                oximeter,
                patient,
                metric_ids["spo2"],
                float(np.clip(rng.normal(96.5, 1.2), 88, 100)),
                now,
            )
        )
        readings.append(
            ValidatedReading(
                at,
                oximeter,
                patient,
                metric_ids["heart_rate"],
                float(np.round(rng.normal(74, 6))),
                now,
            )
        )
    for minutes_ago in (45, 15):
        at = now - timedelta(minutes=minutes_ago)
        readings.append(
            ValidatedReading(
                at,
                cuff,
                patient,
                metric_ids["bp_systolic"],
                float(np.round(rng.normal(128, 8))),
                now,
            )
        )
        readings.append(
            ValidatedReading(
                at,
                cuff,
                patient,
                metric_ids["bp_diastolic"],
                float(np.round(rng.normal(82, 5))),
                now,
            )
        )
    return readings


def run_demo(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        edition = detect_edition(conn)
        print(
            f"PostgreSQL {edition.postgres_version}, TimescaleDB {edition.timescaledb_version} "
            f"({edition.license} edition)"
        )
        now = datetime.now(UTC).replace(microsecond=0)
        run = uuid.uuid4().hex[:8]
        patient = register_patient(
            conn,
            identity=PatientIdentity(
                given_name="Demo", family_name=f"Patient {run}", sex="unknown"
            ),
            identifiers=[(DEMO_MRN_SYSTEM, f"MRN-{run}")],
        )
        oximeter = register_device(
            conn,
            kind="pulse_oximeter",
            manufacturer="Acme",
            model="OX-1",
            serial_number=f"OX-{run}",
        )
        cuff = register_device(
            conn, kind="bp_cuff", manufacturer="Acme", model="BP-2", serial_number=f"BP-{run}"
        )
        for device in (oximeter, cuff):
            assign_device(
                conn,
                device_id=device.device_id,
                patient_id=patient,
                valid_from=now - timedelta(hours=2),
            )
        print(
            f"registered patient {patient} (MRN-{run}) with devices "
            f"{oximeter.device_id} (pulse oximeter) and {cuff.device_id} (BP cuff)"
        )

        catalogue = conn.execute(queries("readings")["metric_ids_by_code"]).fetchall()
        metric_ids: dict[str, int] = dict(catalogue)
        readings = _simulated_hour(
            now=now,
            oximeter=oximeter.device_id,
            cuff=cuff.device_id,
            patient=patient,
            metric_ids=metric_ids,
            seed=int(run, 16),
        )
        batch_id = store_readings(conn, readings, source="import")
        print(f"stored {len(readings)} readings in ingest batch {batch_id} (one binary COPY)")

        rows = conn.execute(
            queries("readings")["recent_for_patient"],
            {"patient_id": patient, "since": now - timedelta(hours=2), "limit": 1000},
        ).fetchall()
        print(f"read back {len(rows)} readings from the rpm.readings hypertable:")
        print(f"  {'measured at (UTC)':<20} {'metric':<14} {'value':>8} unit")
        for measured_at, code, value, unit, _device, _batch in rows:
            when = measured_at.astimezone(UTC)
            print(f"  {when:%Y-%m-%d %H:%M:%S}  {code:<14} {value:>8.1f} {unit}")
