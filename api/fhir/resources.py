"""FHIR R4 constants and the small resources every FHIR answer is built from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"

BP_PANEL = "85354-9"
BP_SYSTOLIC = "8480-6"
BP_DIASTOLIC = "8462-4"
BP_PANEL_DISPLAY = "Blood pressure panel with all children optional"

Severity = Literal["fatal", "error", "warning", "information"]


def now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def issue(
    severity: Severity, code: str, diagnostics: str, *, expression: str | None = None
) -> dict[str, Any]:
    """One OperationOutcome.issue; ``code`` is from the FHIR issue-type value set."""
    found: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression is not None:
        found["expression"] = [expression]
    return found


def operation_outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def fhir_response(
    body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=FHIR_JSON, headers=headers)


def outcome_response(
    status_code: int,
    code: str,
    diagnostics: str,
    headers: dict[str, str] | None = None,
    *,
    expression: str | None = None,
) -> JSONResponse:
    """An error answered the FHIR way: an OperationOutcome with one error issue."""
    return fhir_response(
        operation_outcome(issue("error", code, diagnostics, expression=expression)),
        status_code,
        headers,
    )
