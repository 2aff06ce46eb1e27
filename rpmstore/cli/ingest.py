"""``rpmstore ingest mqtt [--retire]``: the MQTT ingestor process."""

from __future__ import annotations

import argparse

from rpmstore import endpoints
from rpmstore.cli.common import Subcommands
from rpmstore.settings import Settings


def _mqtt(settings: Settings, args: argparse.Namespace) -> int:
    from rpmstore.ingest_process import run_mqtt_ingestor

    return run_mqtt_ingestor(
        settings,
        database_url=endpoints.database_url(settings),
        mqtt_url=endpoints.mqtt_url(settings),
        retire=args.retire,
    )


def register(commands: Subcommands) -> None:
    ingest = commands.add_parser("ingest", help="device ingest processes")
    kinds = ingest.add_subparsers(dest="kind", required=True, metavar="TRANSPORT")
    mqtt = kinds.add_parser(
        "mqtt", help="consume device readings from the broker (shared subscription)"
    )
    mqtt.add_argument(
        "--retire",
        action="store_true",
        help="for an ingestor taken out of service: store what its persistent session "
        "(RPMSTORE_MQTT_CLIENT_ID) still holds, then end the session at the broker",
    )
    mqtt.set_defaults(handler=_mqtt)
