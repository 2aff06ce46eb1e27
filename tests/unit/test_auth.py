"""Clinician bearer tokens: what is accepted, what is refused, and the CLI's dev tokens."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from api.auth import AuthConfig, AuthError, InsecureAuthConfigError
from rpmstore.cli import main
from rpmstore.settings import Settings
from tests.apphelpers import TEST_AUTH, TEST_JWT_SECRET


def _token(**claims: object) -> str:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "dr-a",
        "roles": ["clinician"],
        "care_teams": [],
        "iss": TEST_AUTH.issuer,
        "aud": TEST_AUTH.audience,
        "exp": now + 60,
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, TEST_JWT_SECRET, "HS256")


def test_a_valid_token_gives_its_principal() -> None:
    team = uuid.uuid4()
    principal = TEST_AUTH.verify(_token(roles=["clinician", "superhero"], care_teams=[str(team)]))
    assert principal.subject == "dr-a"
    assert principal.roles == {"clinician"}  # unknown roles are ignored, not trusted
    assert principal.care_teams == (team,)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "not valid"),
        ({"iss": "evil"}, "not valid"),
        ({"exp": None}, "not valid"),
        ({"sub": None}, "not valid"),
        ({"roles": "admin"}, "roles claim"),
        ({"care_teams": ["not-a-uuid"]}, "care_teams claim"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(claims: dict[str, object], message: str) -> None:
    with pytest.raises(AuthError, match=message):
        TEST_AUTH.verify(_token(**claims))


def _signed(payload: bytes) -> str:
    """A token over exactly these JSON bytes (jwt.encode would re-serialise a dict)."""
    return jwt.api_jws.PyJWS().encode(payload, TEST_JWT_SECRET, "HS256")


@pytest.mark.parametrize(
    ("claim", "written", "message"),
    [
        # PyJWT reads exp and nbf through int(): a string expiry was honoured as a number.
        ("exp", '"9999999999"', "exp claim must be a NumericDate"),
        # Refused by PyJWT itself (true is read as 1, long expired): either refusal will do.
        ("exp", "true", "expired|exp claim must be a NumericDate"),
        ("exp", "NaN", r"\(exp\) must be an integer|exp claim must be a NumericDate"),
        ("exp", "Infinity", r"\(exp\) must be an integer|exp claim must be a NumericDate"),
        ("nbf", '"0"', "nbf claim must be a NumericDate"),
        ("iat", '"0"', "iat claim must be a NumericDate"),
        ("iat", "[1]", r"\(iat\) must be an integer|iat claim must be a NumericDate"),
        ("sub", '["dr-a"]', "not valid|sub claim must be a string"),
        ("sub", "42", "not valid|sub claim must be a string"),
        ("jti", "{}", "JWT ID must be a string|jti claim must be a string"),
        ("aud", '["rpmstore-api", 1]', "not valid|aud claim"),
    ],
)
def test_registered_claims_must_have_their_rfc_7519_types(
    claim: str, written: str, message: str
) -> None:
    claims = {
        "sub": '"dr-a"',
        "roles": '["clinician"]',
        "iss": f'"{TEST_AUTH.issuer}"',
        "aud": f'"{TEST_AUTH.audience}"',
        "exp": str(int(time.time()) + 60),
        claim: written,
    }
    payload = "{" + ", ".join(f'"{name}": {value}' for name, value in claims.items()) + "}"
    with pytest.raises(AuthError, match=message):
        TEST_AUTH.verify(_signed(payload.encode()))


def test_numeric_dates_may_be_fractional_and_aud_a_list() -> None:
    now = time.time()
    token = _token(exp=now + 60.5, iat=now, nbf=now - 1.5, aud=["other", TEST_AUTH.audience])
    assert TEST_AUTH.verify(token).subject == "dr-a"


def test_a_token_signed_with_another_key_is_refused() -> None:
    forged = jwt.encode(
        {"sub": "x", "iss": TEST_AUTH.issuer, "aud": TEST_AUTH.audience, "exp": 2**31},
        "another-secret-of-sufficient-length-0123456789",
        "HS256",
    )
    with pytest.raises(AuthError):
        TEST_AUTH.verify(forged)


def test_unsafe_configurations_are_refused() -> None:
    def build(secret: str | None, algorithm: str) -> AuthConfig:
        return AuthConfig.build(
            secret=secret, algorithm=algorithm, public_key=None, issuer="i", audience="a"
        )

    # No key at all: there is no built-in one to fall back on.
    for missing in (None, ""):
        with pytest.raises(InsecureAuthConfigError, match="RPMSTORE_JWT_SECRET"):
            build(missing, "HS256")
    with pytest.raises(InsecureAuthConfigError, match="at least 32"):
        build("short", "HS256")
    with pytest.raises(InsecureAuthConfigError, match="PUBLIC_KEY"):
        build(TEST_JWT_SECRET, "RS256")


def test_settings_have_no_jwt_secret_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RPMSTORE_JWT_SECRET", raising=False)
    assert Settings().jwt_secret is None


def test_cli_token_is_accepted_by_the_api_config(capsys: pytest.CaptureFixture[str]) -> None:
    team = uuid.uuid4()
    argv = ["token", "--subject", "dr-b", "--role", "clinician", "--care-team", str(team)]
    assert main(argv) == 0
    principal = TEST_AUTH.verify(capsys.readouterr().out.strip())
    assert (principal.subject, principal.care_teams) == ("dr-b", (team,))
