"""``rpmstore serve`` (the HTTP API) and ``rpmstore token`` (sign a bearer token)."""

from __future__ import annotations

import argparse
import os
import uuid

from api.auth import InsecureAuthConfigError
from ingest.transport import InsecureTransportError, is_loopback
from rpmstore.cli.common import Subcommands, say
from rpmstore.clinician_demo import TokenSigner
from rpmstore.settings import Settings


def https_files(settings: Settings, host: str) -> tuple[str, str] | tuple[None, None]:
    """The HTTPS certificate and key for uvicorn; (None, None): plain HTTP, refused off
    loopback.

    Device tokens, clinician tokens and readings cross this port: in the clear only on this
    machine, or behind a proxy that terminates TLS (``RPMSTORE_HTTP_ALLOW_PLAINTEXT``).
    """
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        raise InsecureTransportError(
            "RPMSTORE_TLS_CERT_FILE and RPMSTORE_TLS_KEY_FILE go together: set both or neither"
        )
    if cert is not None and key is not None:
        for path in (cert, key):
            if not path.is_file():
                raise InsecureTransportError(f"{path}: no such file (HTTPS certificate or key)")
        return str(cert), str(key)
    if not is_loopback(host) and not settings.http_allow_plaintext:
        raise InsecureTransportError(
            f"serve --host {host} without TLS would carry tokens and readings in the clear: "
            "set RPMSTORE_TLS_CERT_FILE and RPMSTORE_TLS_KEY_FILE, or, behind a proxy that "
            "terminates TLS, RPMSTORE_HTTP_ALLOW_PLAINTEXT=true (docs/operations/tls.md)"
        )
    return None, None


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn  # imported here: only this command needs the server

    from api.app import create_app
    from rpmstore.asgi import app_settings

    role = args.role or settings.serve_role
    # Checked once, before any worker starts: no database or no safe auth fails here.
    checked = app_settings(settings, role)
    certfile, keyfile = https_files(settings, args.host)
    # One set of server options for both ways of running, so they cannot drift apart.
    server_options = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
    }
    if args.workers > 1:
        # Separate processes (one group committer each) use more than one core for decoding
        # and validation; they read their settings from the environment they inherit and find
        # the database the same way this process does.
        os.environ["RPMSTORE_SERVE_ROLE"] = role
        uvicorn.run("rpmstore.asgi:app", factory=True, workers=args.workers, **server_options)
    else:
        uvicorn.run(create_app(**checked), **server_options)
    return 0


def token_signer(settings: Settings, *, lifetime_s: int = 3600) -> TokenSigner | None:
    """Signs tokens with the API's own HS256 secret, the one ``serve`` would verify them with
    (None with an IdP's key pair); refuses without a secret, as ``serve`` does."""
    from api.auth import issue_token
    from rpmstore.asgi import auth_config

    config = auth_config(settings)
    if config.algorithm != "HS256":
        return None
    secret = config.verification_key  # HS256: the shared secret itself

    def sign(subject: str, roles: list[str], teams: list[uuid.UUID]) -> str:
        return issue_token(
            config, secret, subject=subject, roles=roles, care_teams=teams, lifetime_s=lifetime_s
        )

    return sign


def _token(settings: Settings, args: argparse.Namespace) -> int:
    sign = token_signer(settings, lifetime_s=args.lifetime)
    if sign is None:
        raise InsecureAuthConfigError(
            f"tokens signed with {settings.jwt_algorithm} come from your identity provider"
        )
    say(sign(args.subject, args.role, args.care_team))
    return 0


def register(commands: Subcommands) -> None:
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument(
        "--role",
        choices=("all", "ingest", "api"),
        default=None,
        help="routes to serve: all (default; RPMSTORE_SERVE_ROLE), ingest (device POST "
        "/v1/readings only) or api (clinician, admin, audit and FHIR routes only)",
    )
    serve.set_defaults(handler=_serve)


def register_token(commands: Subcommands) -> None:
    token = commands.add_parser(
        "token",
        help="sign a clinician/ops/admin bearer token with RPMSTORE_JWT_SECRET or the "
        "embedded stack's generated secret (HS256)",
    )
    token.add_argument("--subject", required=True, help="the user (sub claim)")
    token.add_argument(
        "--role", action="append", required=True, choices=["clinician", "ops", "admin"]
    )
    token.add_argument("--care-team", action="append", type=uuid.UUID, default=[])
    token.add_argument("--lifetime", type=int, default=3600, help="seconds (default 3600)")
    token.set_defaults(handler=_token)
