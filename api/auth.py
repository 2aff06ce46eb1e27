"""Bearer JWTs for clinicians, ops and admins (devices keep their own tokens).

Claims (OIDC style): ``sub`` (the user), ``roles`` (any of clinician, ops, admin), ``care_teams``
(care-team UUIDs), plus ``exp``, ``iss`` and ``aud``, which are required and checked. The database
has the last word on what a user sees (row-level security); the token only says who is asking.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from ingest import json_type

Role = Literal["clinician", "ops", "admin"]
ROLES: frozenset[str] = frozenset({"clinician", "ops", "admin"})
# Tokens are short-lived; a little clock skew between the IdP and this host is normal.
LEEWAY_S = 30
MIN_SECRET_CHARS = 32


class InsecureAuthConfigError(RuntimeError):
    """The API has no key to verify tokens with, or one too weak to trust."""


class AuthError(Exception):
    """The request carries no usable token (HTTP 401)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Principal:
    """Who is calling, from a verified token."""

    subject: str
    roles: frozenset[str]
    care_teams: tuple[uuid.UUID, ...]

    @property
    def audit_role(self) -> str:
        """The role recorded in the audit log: the most powerful one the token holds."""
        for role in ("admin", "clinician", "ops"):
            if role in self.roles:
                return role
        return "none"


@dataclass(frozen=True)
class AuthConfig:
    verification_key: str
    algorithm: str
    issuer: str
    audience: str

    @classmethod
    def build(
        cls,
        *,
        secret: str | None,
        algorithm: str,
        public_key: str | None,
        issuer: str,
        audience: str,
    ) -> AuthConfig:
        """A verifier, or a refusal: there is no built-in key to fall back on."""
        if algorithm == "HS256":
            if not secret:
                raise InsecureAuthConfigError(
                    "no key to verify clinician tokens: set RPMSTORE_JWT_SECRET (HS256, at "
                    "least 32 random characters) or RPMSTORE_JWT_ALGORITHM and "
                    "RPMSTORE_JWT_PUBLIC_KEY (your identity provider's); the embedded stack "
                    "('rpmstore db up') supplies its generated secret only while DATABASE_URL "
                    "is unset"
                )
            # HS256 with a short secret can be brute-forced offline from any one token.
            if len(secret) < MIN_SECRET_CHARS:
                raise InsecureAuthConfigError(
                    f"RPMSTORE_JWT_SECRET must be at least {MIN_SECRET_CHARS} characters"
                )
            return cls(secret, algorithm, issuer, audience)
        if not public_key:
            raise InsecureAuthConfigError(
                f"RPMSTORE_JWT_ALGORITHM={algorithm} needs RPMSTORE_JWT_PUBLIC_KEY (PEM)"
            )
        return cls(public_key, algorithm, issuer, audience)

    def verify(self, token: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.verification_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}") from None
        _check_registered_claims(claims)
        return _principal(claims)


# RFC 7519 section 4.1: exp, nbf and iat are NumericDates (JSON numbers); sub and iss are
# StringOrURI; aud is one or an array of them. PyJWT checks exp and nbf through int(), so a
# string "9999999999" passed as an expiry: a token its issuer did not write to spec is refused
# rather than read one way here and another way by the next verifier.
_NUMERIC_DATES = ("exp", "nbf", "iat")
_STRINGS = ("sub", "iss", "jti")


def _check_registered_claims(claims: dict[str, Any]) -> None:
    """Refuse registered claims of the wrong JSON type (HTTP 401)."""
    for name in _NUMERIC_DATES:
        if name in claims:
            value = claims[name]
            if type(value) not in (int, float) or not math.isfinite(value):
                raise AuthError(
                    f"the token's {name} claim must be a NumericDate (seconds since the epoch, "
                    f"a JSON number), got {json_type(value)}"
                )
    for name in _STRINGS:
        if name in claims and type(claims[name]) is not str:
            raise AuthError(
                f"the token's {name} claim must be a string, got {json_type(claims[name])}"
            )
    audience = claims.get("aud")
    if not (
        type(audience) is str
        or (type(audience) is list and audience and all(type(a) is str for a in audience))
    ):
        raise AuthError(
            "the token's aud claim must be a string or a non-empty array of strings, "
            f"got {json_type(audience)}"
        )


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims["sub"]
    roles = claims.get("roles", [])
    teams = claims.get("care_teams", [])
    if not isinstance(subject, str) or not subject:
        raise AuthError("the token's sub claim must be a non-empty string")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("the token's roles claim must be a list of strings")
    if not isinstance(teams, list):
        raise AuthError("the token's care_teams claim must be a list of care-team ids")
    try:
        care_teams = tuple(uuid.UUID(str(team)) for team in teams)
    except ValueError:
        raise AuthError("the token's care_teams claim must hold care-team UUIDs") from None
    return Principal(subject, frozenset(roles) & ROLES, care_teams)


def issue_token(
    config: AuthConfig,
    secret: str,
    *,
    subject: str,
    roles: list[str],
    care_teams: list[uuid.UUID],
    lifetime_s: int = 3600,
) -> str:
    """An HS256 token for development and tests (production tokens come from the IdP)."""
    now = int(time.time())
    return jwt.encode(
        {
            "sub": subject,
            "roles": roles,
            "care_teams": [str(team) for team in care_teams],
            "iss": config.issuer,
            "aud": config.audience,
            "iat": now,
            "exp": now + lifetime_s,
        },
        secret,
        algorithm="HS256",
    )
