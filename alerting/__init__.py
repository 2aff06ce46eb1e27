"""Alerting: rules evaluated after ingest commits (thresholds, sustained breaches, missing
data), the outbox worker, the missing-data sweep and the alert lifecycle clinicians drive.

Ingest, the API and the jobs use alerting only through what this module exports (an
import-linter contract checks it). Rules, overrides and alerts live in PostgreSQL; the rules'
semantics and every statement are in ``schema/queries/alerting.sql`` (evaluation) and
``schema/queries/alert_lifecycle.sql`` (acknowledge and resolve).
"""

from alerting.evaluator import AlertEvaluator, EvaluationResult, TouchedRange, merge_ranges
from alerting.lifecycle import (
    AlertNotFoundError,
    IllegalAlertTransitionError,
    acknowledge_alert,
    resolve_alert,
)
from alerting.metrics import AlertMetrics
from alerting.service import run_alert_service
from alerting.sweep import SweepResult, sweep_missing_data
from alerting.worker import AlertingOptions, AlertWorker

__all__ = [
    "AlertEvaluator",
    "AlertMetrics",
    "AlertNotFoundError",
    "AlertWorker",
    "AlertingOptions",
    "EvaluationResult",
    "IllegalAlertTransitionError",
    "SweepResult",
    "TouchedRange",
    "acknowledge_alert",
    "merge_ranges",
    "resolve_alert",
    "run_alert_service",
    "sweep_missing_data",
]
