"""Administration: care teams and their members, patients, devices, assignments, alert rules.

Admin routes run under the same row-level security as every other route (the admin role's
policies allow them) and are audited the same way.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Literal

import psycopg
from fastapi import APIRouter, HTTPException, status
from pydantic import AfterValidator, BaseModel, Field, model_validator

from api.access import NotVisibleError, scoped_transaction
from api.deps import AdminUser, ApiPoolDep, RouteDep
from api.json_body import StrictJsonRoute
from api.pagination import invalid_input
from api.types import Text
from schema.credentials import hash_device_token, mosquitto_password_hash
from schema.sql import queries

router = APIRouter(prefix="/v1/admin", tags=["administration"], route_class=StrictJsonRoute)
_Q = queries("clinician")
_REGISTRY = queries("registry")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a UTC offset")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class CareTeamIn(BaseModel):
    name: Text


class Created(BaseModel):
    id: uuid.UUID


class MemberIn(BaseModel):
    subject: Text = Field(description="The clinician's OIDC subject (sub claim)")
    display_name: Text


class TeamPatientIn(BaseModel):
    patient_id: uuid.UUID


class IdentifierIn(BaseModel):
    system: Text = Field(description="Issuer of the identifier, e.g. urn:oid:... of the MRN")
    value: Text


class PatientIn(BaseModel):
    given_name: Text | None = None
    family_name: Text | None = None
    birth_date: date | None = None
    sex: Literal["female", "male", "other", "unknown"] | None = None
    identifiers: list[IdentifierIn] = Field(default_factory=list, max_length=20)
    care_team_ids: list[uuid.UUID] = Field(default_factory=list, max_length=20)


DeviceKind = Literal[
    "bp_cuff", "pulse_oximeter", "glucose_meter", "scale", "thermometer", "wearable", "gateway"
]


class DeviceIn(BaseModel):
    kind: DeviceKind
    manufacturer: Text
    model: Text
    serial_number: Text


class DeviceCreated(BaseModel):
    device_id: uuid.UUID
    token: str = Field(description="The device's bearer token: shown once, stored only hashed")


class AssignmentIn(BaseModel):
    device_id: uuid.UUID
    patient_id: uuid.UUID
    valid_from: AwareDatetime
    valid_until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AssignmentIn:
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class AssignmentCreated(BaseModel):
    assignment_id: int


Interval = Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=30))]


class RuleIn(BaseModel):
    name: Text
    metric: Text = Field(description="Catalogue code or LOINC code")
    kind: Literal["above", "below", "missing_data"]
    threshold: float | None = Field(None, allow_inf_nan=False)
    sustained_for: Interval = timedelta(0)
    missing_after: Interval | None = None
    severity: Literal["critical", "major", "minor", "warning"]
    auto_resolve: bool = True
    enabled: bool = True

    @model_validator(mode="after")
    def _parameters(self) -> RuleIn:
        if self.kind == "missing_data":
            if self.missing_after is None or self.missing_after <= timedelta(0):
                raise ValueError("a missing_data rule needs a positive missing_after")
            if self.threshold is not None:
                raise ValueError("a missing_data rule has no threshold")
        elif self.threshold is None or self.missing_after is not None:
            raise ValueError(f"an {self.kind!r} rule needs a threshold and no missing_after")
        return self


class OverrideIn(BaseModel):
    threshold: float | None = Field(None, allow_inf_nan=False)
    sustained_for: Interval | None = None
    missing_after: Interval | None = None
    enabled: bool | None = None


def _conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail)


@router.post("/care-teams", status_code=201, response_model=Created, summary="New care team")
async def create_care_team(
    body: CareTeamIn, user: AdminUser, pool: ApiPoolDep, route: RouteDep
) -> Created:
    try:
        async with scoped_transaction(pool, user, route=route, action="create_care_team") as tx:
            cur = await tx.conn.execute(_Q["insert_care_team"], {"name": body.name})
            row = await cur.fetchone()
            assert row is not None
            tx.audit("create_care_team", care_team_id=str(row[0]))
    except psycopg.errors.UniqueViolation:
        raise _conflict(f"a care team named {body.name!r} exists") from None
    return Created(id=row[0])


@router.post(
    "/care-teams/{care_team_id}/members", status_code=204, summary="Add a clinician to a team"
)
async def add_member(
    care_team_id: uuid.UUID, body: MemberIn, user: AdminUser, pool: ApiPoolDep, route: RouteDep
) -> None:
    try:
        async with scoped_transaction(pool, user, route=route, action="add_team_member") as tx:
            cur = await tx.conn.execute(
                _Q["upsert_clinician"],
                {"subject": body.subject, "display_name": body.display_name},
            )
            row = await cur.fetchone()
            assert row is not None
            await tx.conn.execute(
                _Q["insert_team_member"], {"care_team_id": care_team_id, "clinician_id": row[0]}
            )
            tx.audit("add_team_member", care_team_id=str(care_team_id), subject=body.subject)
    except psycopg.errors.ForeignKeyViolation:
        raise NotVisibleError("care team") from None


@router.post(
    "/care-teams/{care_team_id}/patients", status_code=204, summary="Add a patient to a team"
)
async def add_team_patient(
    care_team_id: uuid.UUID,
    body: TeamPatientIn,
    user: AdminUser,
    pool: ApiPoolDep,
    route: RouteDep,
) -> None:
    try:
        async with scoped_transaction(pool, user, route=route, action="add_team_patient") as tx:
            await tx.conn.execute(
                _Q["insert_team_patient"],
                {"care_team_id": care_team_id, "patient_id": body.patient_id},
            )
            tx.audit("add_team_patient", patient_id=body.patient_id, care_team_id=str(care_team_id))
    except psycopg.errors.ForeignKeyViolation:
        raise NotVisibleError("care team or patient", patient_id=body.patient_id) from None


@router.post("/patients", status_code=201, response_model=Created, summary="Register a patient")
async def register_patient(
    body: PatientIn, user: AdminUser, pool: ApiPoolDep, route: RouteDep
) -> Created:
    try:
        async with scoped_transaction(pool, user, route=route, action="register_patient") as tx:
            cur = await tx.conn.execute(_REGISTRY["insert_patient"])
            row = await cur.fetchone()
            assert row is not None
            patient_id: uuid.UUID = row[0]
            if body.given_name or body.family_name or body.birth_date or body.sex:
                await tx.conn.execute(
                    _REGISTRY["insert_patient_identity"],
                    {
                        "patient_id": patient_id,
                        "given_name": body.given_name,
                        "family_name": body.family_name,
                        "birth_date": body.birth_date,
                        "sex": body.sex,
                    },
                )
            for identifier in body.identifiers:
                await tx.conn.execute(
                    _REGISTRY["insert_patient_identifier"],
                    {
                        "patient_id": patient_id,
                        "system": identifier.system,
                        "value": identifier.value,
                    },
                )
            for team in body.care_team_ids:
                await tx.conn.execute(
                    _Q["insert_team_patient"], {"care_team_id": team, "patient_id": patient_id}
                )
            tx.audit("register_patient", patient_id=patient_id)
    except psycopg.errors.UniqueViolation:
        raise _conflict("an identifier is listed twice") from None
    except psycopg.errors.ForeignKeyViolation:
        raise NotVisibleError("care team") from None
    return Created(id=patient_id)


@router.post("/devices", status_code=201, response_model=DeviceCreated, summary="Register a device")
async def register_device(
    body: DeviceIn, user: AdminUser, pool: ApiPoolDep, route: RouteDep
) -> DeviceCreated:
    """Returns the device's bearer token once; only hashes of it are stored."""
    token = secrets.token_urlsafe(32)
    try:
        async with scoped_transaction(pool, user, route=route, action="register_device") as tx:
            cur = await tx.conn.execute(
                _REGISTRY["insert_device"],
                {
                    "kind": body.kind,
                    "manufacturer": body.manufacturer,
                    "model": body.model,
                    "serial_number": body.serial_number,
                    "credential_sha256": hash_device_token(token),
                    "broker_password_hash": mosquitto_password_hash(token),
                },
            )
            row = await cur.fetchone()
            assert row is not None
            tx.audit("register_device", device_id=str(row[0]))
    except psycopg.errors.UniqueViolation:
        raise _conflict("a device with this manufacturer, model and serial number exists") from None
    return DeviceCreated(device_id=row[0], token=token)


@router.post(
    "/assignments",
    status_code=201,
    response_model=AssignmentCreated,
    summary="Assign a device to a patient",
)
async def assign_device(
    body: AssignmentIn, user: AdminUser, pool: ApiPoolDep, route: RouteDep
) -> AssignmentCreated:
    """Readings are attributed by their own time, so periods of one device may not overlap."""
    try:
        async with scoped_transaction(pool, user, route=route, action="assign_device") as tx:
            cur = await tx.conn.execute(
                _REGISTRY["insert_assignment"],
                {
                    "device_id": body.device_id,
                    "patient_id": body.patient_id,
                    "valid_from": body.valid_from,
                    "valid_until": body.valid_until,
                },
            )
            row = await cur.fetchone()
            assert row is not None
            tx.audit("assign_device", patient_id=body.patient_id, device_id=str(body.device_id))
    except psycopg.errors.ExclusionViolation:
        raise _conflict("the device is already assigned during part of that period") from None
    except psycopg.errors.ForeignKeyViolation:
        raise NotVisibleError("device or patient", patient_id=body.patient_id) from None
    return AssignmentCreated(assignment_id=row[0])


@router.post("/rules", status_code=201, response_model=Created, summary="New alert rule")
async def create_rule(body: RuleIn, user: AdminUser, pool: ApiPoolDep, route: RouteDep) -> Created:
    async with scoped_transaction(pool, user, route=route, action="create_rule") as tx:
        cur = await tx.conn.execute(_Q["metric_by_code"], {"metric": body.metric})
        metric = await cur.fetchone()
        if metric is None:
            raise invalid_input(("body", "metric"), f"unknown metric {body.metric!r}")
        cur = await tx.conn.execute(
            _Q["insert_rule"],
            {
                "name": body.name,
                "metric_id": metric[0],
                "kind": body.kind,
                "threshold": body.threshold,
                "sustained_for": body.sustained_for,
                "missing_after": body.missing_after,
                "severity": body.severity,
                "auto_resolve": body.auto_resolve,
                "enabled": body.enabled,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        tx.audit("create_rule", rule_id=str(row[0]))
    return Created(id=row[0])


@router.put(
    "/rules/{rule_id}/patients/{patient_id}",
    status_code=204,
    summary="Override a rule's thresholds for one patient",
)
async def override_rule(
    rule_id: uuid.UUID,
    patient_id: uuid.UUID,
    body: OverrideIn,
    user: AdminUser,
    pool: ApiPoolDep,
    route: RouteDep,
) -> None:
    try:
        async with scoped_transaction(pool, user, route=route, action="override_rule") as tx:
            await tx.conn.execute(
                _Q["upsert_rule_override"],
                {"rule_id": rule_id, "patient_id": patient_id, **body.model_dump()},
            )
            tx.audit("override_rule", patient_id=patient_id, rule_id=str(rule_id))
    except psycopg.errors.ForeignKeyViolation:
        raise NotVisibleError("rule or patient", patient_id=patient_id) from None
