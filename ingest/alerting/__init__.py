"""Alert rules evaluated after ingest commits: thresholds, sustained breaches, missing data.

Rules, overrides and alerts live in PostgreSQL; the rules' semantics and every statement are in
``schema/queries/alerting.sql`` (evaluation) and ``schema/queries/alert_lifecycle.sql``
(acknowledge and resolve, for the clinician API).
"""

from ingest.alerting.evaluator import AlertEvaluator, EvaluationResult, TouchedRange, touched_ranges
from ingest.alerting.lifecycle import (
    AlertNotFoundError,
    IllegalAlertTransitionError,
    acknowledge_alert,
    resolve_alert,
)
from ingest.alerting.sweep import SweepResult, sweep_missing_data
from ingest.alerting.worker import AlertWorker

__all__ = [
    "AlertEvaluator",
    "AlertNotFoundError",
    "AlertWorker",
    "EvaluationResult",
    "IllegalAlertTransitionError",
    "SweepResult",
    "TouchedRange",
    "acknowledge_alert",
    "resolve_alert",
    "sweep_missing_data",
    "touched_ranges",
]
