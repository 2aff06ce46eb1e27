"""The demo's last act: the ward as a clinician sees it, through the clinician API.

An admin token puts the simulated patients in a care team with one clinician; that clinician's
token then reads the panel (worst open alert first) and the open alerts the rule engine raised
while the ward was sending. Every call goes through row-level security and the audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx2

from rpmstore.simulate_ward import SimPatient

# (subject, roles, care teams) -> a signed bearer token
TokenSigner = Callable[[str, list[str], list[uuid.UUID]], str]
CLINICIAN = "demo-clinician"


def print_clinician_view(api_url: str, patients: Sequence[SimPatient], sign: TokenSigner) -> None:
    mrn_by_id = {str(p.patient_id): p.mrn for p in patients}
    with httpx2.Client(base_url=api_url, timeout=10.0, trust_env=False) as client:
        team = create_care_team(client, sign("demo-admin", ["admin"], []), patients, CLINICIAN)
        clinician = {"Authorization": f"Bearer {sign(CLINICIAN, ['clinician'], [team])}"}
        panel = _get(client, "/v1/patients", clinician, {"limit": 20})["items"]
        alerts = _get(client, "/v1/alerts", clinician, {"limit": 20})["items"]
    print()
    print(f"the ward as {CLINICIAN} sees it (GET /v1/patients, care team {team}):")
    print(f"  {'patient':<16} {'open alerts':>11}  worst     latest SpO2  latest systolic")
    for item in panel:
        vitals = {v["metric"]: v["value"] for v in item["latest_vitals"]}
        print(
            f"  {mrn_by_id.get(item['patient_id'], item['patient_id'][:8]):<16} "
            f"{item['open_alerts']:>11}  {item['worst_open_severity'] or '-':<9} "
            f"{_show(vitals.get('spo2'))}  {_show(vitals.get('bp_systolic'))}"
        )
    print()
    print("alerts (GET /v1/alerts), raised by the rule engine after commit, auto-resolved when")
    print("back in range:")
    if not alerts:
        print("  none")
    for alert in alerts:
        print(
            f"  {alert['status']:<12} {alert['severity']:<9} "
            f"{mrn_by_id.get(alert['patient_id'], '?'):<16} "
            f"{alert['rule_snapshot'].get('name', alert['rule_id'])}: "
            f"{alert['breach_count']} breaching readings, last {alert['last_value']:g}"
        )


def create_care_team(
    client: httpx2.Client, admin_token: str, patients: Sequence[SimPatient], clinician: str
) -> uuid.UUID:
    """A new care team holding ``patients`` with ``clinician`` as its member, via the API."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    name = f"Demo ward {uuid.uuid4().hex[:6]}"
    team = _post(client, "/v1/admin/care-teams", admin, {"name": name})["id"]
    _post(
        client,
        f"/v1/admin/care-teams/{team}/members",
        admin,
        {"subject": clinician, "display_name": clinician},
    )
    for patient in patients:
        _post(
            client,
            f"/v1/admin/care-teams/{team}/patients",
            admin,
            {"patient_id": str(patient.patient_id)},
        )
    return uuid.UUID(team)


def _post(client: httpx2.Client, path: str, headers: dict[str, str], body: Any) -> Any:
    response = client.post(path, json=body, headers=headers)
    response.raise_for_status()
    return response.json() if response.content else None


def _get(client: httpx2.Client, path: str, headers: dict[str, str], params: dict[str, Any]) -> Any:
    response = client.get(path, params=params, headers=headers)
    response.raise_for_status()
    return response.json()


def _show(value: float | None) -> str:
    return f"{value:>11.1f}" if value is not None else f"{'-':>11}"
