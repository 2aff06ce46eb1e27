"""``rpmstore broker sync|passwd``: device accounts on the MQTT broker."""

from __future__ import annotations

import argparse

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


def register(commands: Subcommands) -> None:
    broker = commands.add_parser("broker", help="device accounts on the MQTT broker")
    actions = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "sync", help="give the embedded Mosquitto one account per active device, and reload it"
    ).set_defaults(handler=_sync)
    actions.add_parser(
        "passwd", help="print device lines for any Mosquitto password_file"
    ).set_defaults(handler=_passwd)
