"""``rpmstore broker sync|passwd|cert|revoke``: device accounts and certificates on the broker."""

from __future__ import annotations

import argparse
from pathlib import Path

import psycopg

from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, say
from rpmstore.localstack import stack
from rpmstore.settings import Settings
from schema.registry import broker_device_accounts


def _sync(settings: Settings, _args: argparse.Namespace) -> int:
    devices = stack.sync_broker_devices(settings)
    say(f"broker accounts: {devices} active devices (service accounts kept)")
    return 0


def _passwd(settings: Settings, _args: argparse.Namespace) -> int:
    with psycopg.connect(endpoints.database_url(settings)) as conn:
        for device_id, password_hash in broker_device_accounts(conn):
            say(f"{device_id}:{password_hash}")
    return 0


def _cert(settings: Settings, args: argparse.Namespace) -> int:
    cert = stack.issue_device_certificate(settings, args.device_id, args.out, args.days)
    say(f"{cert} (key beside it, mode 0600; ca.crt verifies the broker)")
    return 0


def _revoke(settings: Settings, args: argparse.Namespace) -> int:
    serial = stack.revoke_device_certificate(settings, args.cert)
    say(f"revoked serial {serial}; the embedded broker reloaded its CRL")
    return 0


def register(commands: Subcommands) -> None:
    broker = commands.add_parser("broker", help="device accounts on the MQTT broker")
    actions = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "sync", help="give the embedded Mosquitto one account per active device, and reload it"
    ).set_defaults(handler=_sync)
    actions.add_parser(
        "passwd", help="print device lines for any Mosquitto password_file"
    ).set_defaults(handler=_passwd)
    cert = actions.add_parser(
        "cert",
        help="issue a device certificate (mutual TLS) from the embedded stack's device CA",
    )
    cert.add_argument("device_id", help="the device id: the certificate's name and username")
    cert.add_argument("--out", type=Path, required=True, help="folder for .crt, .key, ca.crt")
    cert.add_argument("--days", type=int, default=397, help="validity (default 397)")
    cert.set_defaults(handler=_cert)
    revoke = actions.add_parser(
        "revoke", help="revoke a device certificate: add it to the CRL, reload the broker"
    )
    revoke.add_argument("cert", type=Path, help="the device's certificate file (PEM)")
    revoke.set_defaults(handler=_revoke)
